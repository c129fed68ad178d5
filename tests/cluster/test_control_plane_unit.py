"""The controller in-process over real gRPC and real HTTP, with replicas simulated at the two
wrapper seams only.

FakeReplicaBackend stands in for RayBackend: instead of Ray actors it starts replica load
reporters (the real ControllerLink over real gRPC) with synthetic load. FakeControlClient stands
in for ReplicaControlClient: a command changes that synthetic load as a replica would. No Ray,
so these run in seconds and exercise the reconciler, health marking, the admin API, cordons,
scale-in by draining, config apply and restarts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from actors.common.commands import (
    Abort,
    AbortResult,
    Command,
    CommandResult,
    Cordon,
    Done,
    ListRequests,
    MigrateOut,
    RequestInfo,
    RequestList,
    Uncordon,
)
from actors.common.config import GrpcSecurity
from actors.common.migration import MigrationReport
from actors.common.types import LoadReport
from actors.replica.reporter import ControllerLink, LoadReporter
from orchestrator.admin.client import AdminClient, AdminError
from orchestrator.admin.token import token_digest
from orchestrator.config.load import parse_config
from orchestrator.controller.client import ControllerClient
from orchestrator.controller.deployment import ConfigUpdater, settings_from_config
from orchestrator.controller.host import ControllerHost
from orchestrator.controller.reconciler import MAX_CREATES_PER_TICK
from orchestrator.controller.router import Router
from orchestrator.controller.settings import ControllerSettings
from policies.cluster_view import ReplicaIdentity, ReplicaLoad, RequestMeta

from .conftest import tiny_config_yaml

REPORT_S = 0.1
TOKEN = "unit-test-admin-token"
SECURITY = GrpcSecurity(secret="unit-test-grpc-secret")  # what every gRPC call here carries


class FakeReplicaBackend:
    """The RayBackend seam: each "replica" is a load reporter speaking real gRPC."""

    def __init__(self) -> None:
        self.reporters: dict[str, LoadReporter] = {}
        self.loads: dict[str, ReplicaLoad] = {}
        self.incarnations: dict[str, str] = {}
        self.requests: dict[str, list[RequestInfo]] = {}
        self.created: list[str] = []
        self.stopped: list[str] = []  # stopped cleanly (scale-in), not killed
        self.commands: list[tuple[str, str, Command]] = []  # (replica, command id, command)
        self.fail_next = 0  # makes the next calls raise, as a flaky Ray would
        self.broken = False  # replicas die while starting
        self._lock = threading.Lock()
        self._seq = 0

    def address(self, replica_id: str) -> str:
        return f"127.0.0.1:{abs(hash(replica_id)) % 50000 + 10000}"

    def report(self, replica_id: str) -> LoadReport:
        with self._lock:
            self._seq += 1
            seq = self._seq
        ident = ReplicaIdentity(
            replica_id, self.address(replica_id), "node-a", self.incarnations[replica_id], 4242
        )
        return LoadReport(ident, seq, self.loads[replica_id])

    def create_replica(self, replica_id: str, settings: ControllerSettings, address: str) -> None:
        self._maybe_fail()
        self.created.append(replica_id)
        if self.broken:
            return  # its "constructor" fails: it never registers and is not alive
        self.loads[replica_id] = _load()
        self.incarnations[replica_id] = "i1"
        self.requests[replica_id] = []
        self._start(replica_id, address)

    def _start(self, replica_id: str, address: str) -> None:
        link = ControllerLink(address, SECURITY, timeout_s=1.0)
        reporter = LoadReporter(lambda: self.report(replica_id), link, REPORT_S)
        self.reporters[replica_id] = reporter
        reporter.start()

    def list_replicas(self) -> list[str]:
        self._maybe_fail()
        return sorted(self.reporters)

    def is_alive(self, replica_id: str) -> bool:
        return replica_id in self.reporters

    def start_error(self, replica_id: str) -> str | None:
        return None  # the fake's replicas never fail in their constructor

    def stop_replica(self, replica_id: str) -> None:
        self.stopped.append(replica_id)
        self.kill_replica(replica_id)

    def kill_replica(self, replica_id: str) -> None:
        reporter = self.reporters.pop(replica_id, None)
        if reporter is not None:
            reporter.stop()

    def restart(self, replica_id: str, address: str) -> None:
        """The replica's process restarts: a fresh engine (not cordoned), a new incarnation."""
        self.reporters.pop(replica_id).stop()
        self.loads[replica_id] = _load()
        self.incarnations[replica_id] = "i2"
        self._start(replica_id, address)

    def relink(self, address: str) -> None:
        """The controller moved (restart): replicas find it, as ControllerLocator would."""
        for replica_id in list(self.reporters):
            self.reporters.pop(replica_id).stop()
            self._start(replica_id, address)

    def _maybe_fail(self) -> None:
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                raise RuntimeError("injected backend failure")

    def connect(self, address: str, security: GrpcSecurity | None) -> FakeControlClient:
        return FakeControlClient(self, address)


class FakeControlClient:
    """The ReplicaControlClient seam: applies a command to the fake replica's synthetic load."""

    def __init__(self, backend: FakeReplicaBackend, address: str) -> None:
        self._backend = backend
        self._address = address

    async def execute(self, command: Command, command_id: str, timeout_s: float) -> CommandResult:
        b = self._backend
        rid = next(r for r in b.reporters if b.address(r) == self._address)
        b.commands.append((rid, command_id, command))
        if isinstance(command, (Cordon, Uncordon)):
            b.loads[rid] = dataclasses.replace(b.loads[rid], cordoned=isinstance(command, Cordon))
            return CommandResult(command_id, Done())
        if isinstance(command, ListRequests):
            return CommandResult(command_id, RequestList(tuple(b.requests[rid])))
        if isinstance(command, MigrateOut):  # moves the listed request and its blocks over
            target = next(r for r in b.reporters if b.address(r) == command.target_address)
            info = next(q for q in b.requests[rid] if q.request_id == command.request_id)
            b.requests[rid].remove(info)
            b.requests[target].append(info)
            for who, sign in ((rid, 1), (target, -1)):
                load = b.loads[who]
                b.loads[who] = dataclasses.replace(
                    load,
                    running=load.running - sign,
                    kv_blocks_free=load.kv_blocks_free + sign * info.kv_blocks,
                )
            report = MigrationReport(command_id, info.request_id, "committed", stages=1)
            return CommandResult(command_id, report)
        assert isinstance(command, Abort)
        found = any(q.request_id == command.request_id for q in b.requests[rid])
        return CommandResult(command_id, AbortResult(found))

    async def close(self) -> None:
        return None


def _load(running: int = 0) -> ReplicaLoad:
    return ReplicaLoad(
        running=running,
        kv_blocks_free=1000,
        kv_blocks_total=1000,
        step_time_ms=1.0,
        max_running=16,
    )


def _config(replicas: int = 2) -> ConfigUpdater:
    return ConfigUpdater(
        parse_config(tiny_config_yaml(replicas, report_interval_s=REPORT_S, unhealthy_after_s=1.0))
    )


def _settings(config: ConfigUpdater) -> ControllerSettings:
    settings = settings_from_config(
        config.current,
        admin_token_digest=token_digest(TOKEN),
        grpc_secret=SECURITY.secret or "",
        admin_port=0,
    )
    return dataclasses.replace(
        settings, reconcile_interval_s=0.05, dead_after_s=0.3, watch_min_interval_s=0.01
    )


def _host(backend: FakeReplicaBackend, replicas: int = 2) -> ControllerHost:
    config = _config(replicas)
    return ControllerHost(_settings(config), backend, config, connect=backend.connect)


def _wait(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)  # polls the controller under test


Controller = tuple[ControllerHost, FakeReplicaBackend, ControllerClient, AdminClient]


@pytest.fixture
def controller() -> Iterator[Controller]:
    backend = FakeReplicaBackend()
    host = _host(backend)
    client = ControllerClient(host.address, SECURITY)
    admin = AdminClient(host.admin_url, TOKEN)
    yield host, backend, client, admin
    admin.close()
    client.close()
    host.stop()
    for replica_id in list(backend.reporters):
        backend.kill_replica(replica_id)


def _healthy(client: ControllerClient) -> list[str]:
    return [r.replica_id for r in client.cluster_view().healthy()]


def _states(admin: AdminClient) -> dict[str, str]:
    return {r["id"]: r["state"] for r in admin.replicas()["replicas"]}


def _meta(i: int) -> RequestMeta:
    return RequestMeta(request_id=f"q{i}", num_prompt_tokens=10, max_tokens=10)


def test_reconciler_converges_and_the_admin_api_shows_it(controller: Controller) -> None:
    host, backend, client, admin = controller
    _wait(lambda: len(_healthy(client)) == 2)
    assert len(backend.created) == 2
    data = admin.replicas()
    assert data["desired_replicas"] == 2 and data["policy"]["name"] == "least_load"
    for r in data["replicas"]:
        assert r["state"] == "ready" and r["pid"] == 4242 and r["node"] == "node-a"
        assert r["address"] == backend.address(r["id"]) and r["kv_blocks_total"] == 1000
        for key in ("running", "waiting", "kv_blocks_free", "incarnation", "uptime_s"):
            assert key in r
    kinds = [e["kind"] for e in admin.events()]
    assert kinds.count("replica_created") == 2 and kinds.count("replica_joined") == 2


def test_dead_replica_marked_unhealthy_then_replaced(controller: Controller) -> None:
    host, backend, client, admin = controller
    _wait(lambda: len(_healthy(client)) == 2)
    victim = backend.created[0]
    backend.kill_replica(victim)
    _wait(lambda: victim not in _healthy(client) or victim not in host.replica_ids())
    # The reconciler replaces it.
    _wait(lambda: len(backend.created) == 3 and len(_healthy(client)) == 2)
    assert victim not in host.replica_ids()
    assert "replica_unhealthy" in [e["kind"] for e in admin.events()]


def test_reconciler_survives_backend_errors(controller: Controller) -> None:
    host, backend, client, _ = controller
    _wait(lambda: len(_healthy(client)) == 2)
    backend.fail_next = 3
    backend.kill_replica(backend.created[0])
    _wait(lambda: host.reconciler.failed_ticks >= 1)
    _wait(lambda: len(backend.created) == 3 and len(_healthy(client)) == 2)


def test_replicas_that_die_starting_back_off() -> None:
    backend = FakeReplicaBackend()
    backend.broken = True
    host = _host(backend)
    client = ControllerClient(host.address, SECURITY)
    try:
        _wait(lambda: host.reconciler.start_failures >= 1)
        created = len(backend.created)
        time.sleep(1.0)  # inside the first 2 s backoff: the reconciler must not create more
        assert len(backend.created) == created
        backend.broken = False
        _wait(lambda: len(_healthy(client)) == 2, timeout_s=8)
    finally:
        client.close()
        host.stop()
        for replica_id in list(backend.reporters):
            backend.kill_replica(replica_id)


def test_cordon_is_desired_state_the_reconciler_keeps(controller: Controller) -> None:
    host, backend, client, admin = controller
    _wait(lambda: len(_healthy(client)) == 2)
    target, other = backend.created
    reply = admin.cordon(target)
    assert reply["command"]["ok"] and reply["replica"]["state"] == "cordoned"
    assert backend.loads[target].cordoned
    # Routers see it at once: no new request goes there.
    assert _healthy(client) == [other]
    # The replica restarts (a fresh, uncordoned process): the reconciler cordons it again,
    # with a new command id (the old one belonged to the old process).
    backend.restart(target, host.address)
    _wait(lambda: backend.loads[target].cordoned and backend.incarnations[target] == "i2")
    ids = [cid for rid, cid, c in backend.commands if rid == target and isinstance(c, Cordon)]
    assert len(set(ids)) == 2
    admin.uncordon(target)
    _wait(lambda: _states(admin)[target] == "ready")
    assert sorted(_healthy(client)) == sorted([target, other])
    with pytest.raises(AdminError) as info:
        admin.cordon("nope")
    assert info.value.status == 404


def test_scale_out_and_in_by_draining(controller: Controller) -> None:
    host, backend, client, admin = controller
    _wait(lambda: len(_healthy(client)) == 2)
    assert admin.scale(3)["desired_replicas"] == 3
    _wait(lambda: len(_healthy(client)) == 3)
    # One replica is busy: scaling to 1 drains the idle ones first and stops each only when it
    # is empty; the busy one stays (the least busy go first).
    busy = backend.created[0]
    backend.loads[busy] = _load(running=3)
    _wait(lambda: host.state.records[busy].report.load.running == 3)
    admin.scale(1)
    _wait(lambda: len(backend.stopped) == 2)
    assert busy not in backend.stopped and host.replica_ids() == [busy]
    assert all(isinstance(c, Cordon) for rid, _, c in backend.commands if rid in backend.stopped)
    # Now drain the busy one too: it stays while it has requests.
    admin.scale(0)
    _wait(lambda: _states(admin).get(busy) == "draining")
    time.sleep(0.5)
    assert busy not in backend.stopped and backend.loads[busy].cordoned
    backend.loads[busy] = dataclasses.replace(backend.loads[busy], running=0)
    _wait(lambda: busy in backend.stopped)
    assert host.replica_ids() == []
    kinds = [e["kind"] for e in admin.events(limit=1000)]
    assert kinds.count("replica_draining") == 3 and kinds.count("replica_removed") == 3


def test_a_huge_scale_is_paced_and_can_be_taken_back(controller: Controller) -> None:
    """A typo (scale 100000) starts at most MAX_CREATES_PER_TICK replicas a tick, so the
    operator's correction takes effect at once and the extras go away."""
    host, backend, client, admin = controller
    _wait(lambda: len(_healthy(client)) == 2)
    ticks = host.reconciler.ticks
    admin.scale(100_000)
    _wait(lambda: len(backend.created) > 2)
    admin.scale(2)
    _wait(lambda: len(host.replica_ids()) == 2, timeout_s=20.0)
    extra = len(backend.created) - 2
    assert 0 < extra <= MAX_CREATES_PER_TICK * (host.reconciler.ticks - ticks)
    assert len(_healthy(client)) == 2


def test_scale_out_while_draining_keeps_the_draining_replica(controller: Controller) -> None:
    host, backend, client, admin = controller
    _wait(lambda: len(_healthy(client)) == 2)
    for rid in backend.created:
        backend.loads[rid] = _load(running=1)
    admin.scale(1)
    _wait(lambda: "draining" in _states(admin).values())
    draining = next(r for r, s in _states(admin).items() if s == "draining")
    admin.scale(2)
    _wait(lambda: _states(admin)[draining] == "ready")
    assert len(backend.created) == 2 and not backend.stopped


def test_scale_in_takes_an_operator_cordoned_replica_first(controller: Controller) -> None:
    host, backend, client, admin = controller
    _wait(lambda: len(_healthy(client)) == 2)
    idle, out_of_service = backend.created
    backend.loads[out_of_service] = _load(running=5)  # busier, but an operator took it out
    admin.cordon(out_of_service)
    admin.scale(1)
    _wait(lambda: _states(admin).get(out_of_service) == "draining")
    assert _states(admin)[idle] == "ready"


def test_a_pressed_replica_sheds_its_smallest_request_to_an_idle_one(
    controller: Controller,
) -> None:
    host, backend, client, admin = controller
    _wait(lambda: len(_healthy(client)) == 2)
    pressed, idle = backend.created
    backend.requests[pressed] = [
        RequestInfo(f"cmpl-{i}", "running", 1, 10, 5, blocks, 0, time.time())
        for i, blocks in enumerate((400, 30, 500))
    ]
    # 90 free blocks, 3 running: 91 % used counting growth, above the 90 % threshold.
    backend.loads[pressed] = dataclasses.replace(_load(running=3), kv_blocks_free=90)
    _wait(lambda: any(m["outcome"] == "committed" for m in admin.migrations()))
    first = admin.migrations()[0]
    assert first["request_id"] == "cmpl-1"  # the smallest running request moved first
    assert [q.request_id for q in backend.requests[idle]][0] == "cmpl-1"
    events = [e for e in admin.events(limit=1000) if e["kind"] == "migration"]
    assert events and events[0]["ok"] and "cmpl-1" in events[0]["message"]
    # 120 free, 2 running: 88 %, no longer pressed; a few rounds later nothing else moved.
    time.sleep(2.5)  # rebalance rounds run every second; none of them may move anything
    assert len(admin.migrations()) == 1


def test_requests_and_abort_through_the_admin_api(controller: Controller) -> None:
    host, backend, client, admin = controller
    _wait(lambda: len(_healthy(client)) == 2)
    rid = backend.created[1]
    info = RequestInfo("cmpl-abc", "running", 1, 5, 2, 1, 0, time.time() - 3)
    backend.requests[rid] = [info]
    listed = admin.requests()
    assert listed["unreachable"] == {}
    (entry,) = listed["requests"]
    assert entry["id"] == "cmpl-abc" and entry["replica"] == rid and entry["age_s"] >= 3
    assert admin.request("cmpl-abc")["replica"] == rid
    assert admin.abort("cmpl-abc")["replica"] == rid
    with pytest.raises(AdminError) as info_404:
        admin.request("cmpl-none")
    assert info_404.value.status == 404


def test_apply_config_valid_invalid_and_scale(controller: Controller) -> None:
    host, backend, client, admin = controller
    _wait(lambda: len(_healthy(client)) == 2)
    with pytest.raises(AdminError) as bad:
        admin.apply_config("dispatch:\n  policy: no_such_policy\n")
    assert bad.value.status == 400 and "dispatch.policy" in str(bad.value)
    assert bad.value.body["error"]["issues"][0]["key"] == "dispatch.policy"
    with pytest.raises(AdminError) as frozen:
        admin.apply_config("model:\n  path: other-model\n")
    assert "model.path" in str(frozen.value)
    assert client.view_update().policy_name == "least_load"
    assert "round_robin" in admin.apply_config("dispatch:\n  policy: round_robin\n")["message"]
    update = client.view_update()
    assert update.policy_name == "round_robin" and update.policy_params["max_queue"] == 64
    admin.apply_config("replicas:\n  count: 3\n")
    _wait(lambda: len(_healthy(client)) == 3)
    assert "count: 3" in admin.config()["yaml"]
    admin.apply_config("replicas:\n  count: 1\n")
    _wait(lambda: len(backend.reporters) == 1 and len(_healthy(client)) == 1)
    assert admin.replicas()["desired_replicas"] == 1
    kinds = [e["kind"] for e in admin.events(limit=1000)]
    assert kinds.count("config_refused") == 2 and kinds.count("config_applied") == 3


def test_restarted_controller_rebuilds_from_registrations() -> None:
    backend = FakeReplicaBackend()
    first = _host(backend)
    client = ControllerClient(first.address, SECURITY)
    try:
        _wait(lambda: len(_healthy(client)) == 2)
        ids = sorted(backend.created)
    finally:
        client.close()
        first.stop()
    second = _host(backend)
    backend.relink(second.address)
    client = ControllerClient(second.address, SECURITY)
    try:
        _wait(lambda: len(_healthy(client)) == 2)
        assert sorted(_healthy(client)) == ids
        assert sorted(backend.created) == ids  # nothing new created
    finally:
        client.close()
        second.stop()
        for replica_id in list(backend.reporters):
            backend.kill_replica(replica_id)


def test_router_routes_locally_and_falls_back(controller: Controller) -> None:
    host, backend, client, _ = controller
    _wait(lambda: len(_healthy(client)) == 2)

    async def run() -> None:
        router = Router(host.address, security=SECURITY, reconnect_s=0.05)
        await router.start(wait_s=5)
        try:
            assert router.connected and router.view is not None
            picks = [await router.route(_meta(i)) for i in range(4)]
            assert {p.replica_id for p in picks[:2]} == set(backend.created)
            # Busy replica 0 reports high load: new requests go to replica 1.
            busy, idle = backend.created
            backend.loads[busy] = _load(running=16)
            await _until(lambda: router.view.get(busy).running == 16)
            assert (await router.route(_meta(9))).replica_id == idle
            # A request failed on `idle`: avoid it until it reports again.
            router.report_failure(idle)
            assert (await router.route(_meta(11))).replica_id == busy
            await _until(lambda: router.view.get(idle).version > router._suspects.get(idle, -1))
            await _until(lambda: idle not in router._suspects)
            assert (await router.route(_meta(12))).replica_id == idle
            # Controller gone: keep routing on the last view (least_load fallback).
            host.stop()
            await _until(lambda: not router.connected)
            fallback = await router.decide(_meta(10))
            assert fallback.result is not None and fallback.result.replica_id == idle
        finally:
            await router.close()

    asyncio.run(run())


def test_every_admin_route_refuses_without_the_token(controller: Controller) -> None:
    """The route table itself is enumerated (API, dashboard page, assets, event stream), so a
    route added later is covered too."""
    host, _, _, _ = controller
    import re

    import httpx

    with httpx.Client(base_url=host.admin_url) as http:
        listed = http.get("/admin/v1/", headers={"Authorization": f"Bearer {TOKEN}"})
        routes = [r.split(" ", 1) for r in listed.json()["routes"]]
        assert {"GET /", "GET /dashboard/", "GET /admin/v1/stream", "POST /admin/v1/scale"} <= {
            f"{m} {p}" for m, p in routes
        }
        for method, path in [*routes, ("GET", "/no-such-route"), ("GET", "/dashboard/x.js")]:
            url = re.sub(r"\{[^}]+\}", "x", path)
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Cookie": "fleetlm_admin=no"}):
                r = http.request(method, url, headers=headers)
                assert r.status_code == 401, (method, path, r.text)
                assert r.json()["error"]["type"] == "authentication_error"


def test_a_browser_signs_in_once_and_cross_site_changes_are_refused(
    controller: Controller,
) -> None:
    host, _, _, _ = controller
    import httpx

    with httpx.Client(base_url=host.admin_url) as http:
        r = http.get("/", params={"token": TOKEN}, follow_redirects=False)
        # The token becomes an HttpOnly, SameSite=Strict cookie and leaves the address bar.
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and TOKEN.lower() in cookie
        page = http.get("/dashboard/")  # the client keeps the cookie, as a browser does
        assert page.status_code == 200 and "dashboard.js" in page.text
        assert http.get("/admin/v1/replicas").status_code == 200
        same = {"Origin": host.admin_url}
        evil = {"Origin": "http://evil.example"}
        assert http.post("/admin/v1/scale", json={"replicas": 2}, headers=same).status_code == 200
        refused = http.post("/admin/v1/scale", json={"replicas": 0}, headers=evil)
        assert refused.status_code == 403 and "cross-site" in refused.text
        assert http.post("/admin/v1/scale", json={"replicas": 0}).status_code == 403  # no Origin
        # A token in the URL opens pages; it changes nothing.
        http.cookies.clear()
        r = http.post("/admin/v1/scale", params={"token": TOKEN}, json={"replicas": 0})
        assert r.status_code == 403
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert http.post("/admin/v1/scale", json={"replicas": 2}, headers=bearer).status_code == 200


def test_the_event_stream_sends_snapshots_of_the_admin_api(controller: Controller) -> None:
    host, _, _, admin = controller
    import json

    import httpx

    _wait(lambda: len(_states(admin)) == 2)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.stream("GET", host.admin_url + "/admin/v1/stream", headers=headers) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        assert next(lines) == "event: snapshot"
        snap = json.loads(next(lines).removeprefix("data: "))
    assert {x["id"] for x in snap["replicas"]} == set(_states(admin))
    assert snap["desired_replicas"] == 2 and snap["policy"]["name"]
    assert {"migrations", "adapters", "events"} <= snap.keys()
    assert snap["events"] and snap["events"][0]["kind"] == "replica_created"


def test_admin_api_errors_name_what_is_wrong(controller: Controller) -> None:
    host, _, _, _ = controller
    import httpx

    with httpx.Client(base_url=host.admin_url + "/admin/v1") as http:
        missing = http.get("/no-such-route", headers={"Authorization": f"Bearer {TOKEN}"})
        assert missing.status_code == 404 and "error" in missing.json()
        bad = http.post(
            "/scale", json={"replicas": "3"}, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "replicas"
        # Query parameters: the wrong type or range names the parameter, with no pydantic dump.
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for path, query in [
            ("/events", "limit=abc"),
            ("/events", "limit=0"),
            ("/migrations", "limit=-5"),
            ("/events", "after=x"),
        ]:
            r = http.get(f"{path}?{query}", headers=auth)
            error = r.json()["error"]
            assert r.status_code == 400, (path, query, r.text)
            assert error["param"] == query.split("=")[0] and "File" not in error["message"]


async def _until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
