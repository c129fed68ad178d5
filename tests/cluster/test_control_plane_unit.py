"""The controller in-process over real gRPC, with replicas simulated at the backend seam only.

FakeReplicaBackend stands in for RayBackend: instead of Ray actors it starts replica load
reporters (the real ControllerLink over real gRPC) with synthetic load. No Ray, so these run in
seconds and exercise the reconciler, health marking, routing, config apply and restarts.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from actors.common.types import LoadSnapshot
from actors.replica.reporter import ControllerLink, LoadReporter
from orchestrator.config.load import parse_config
from orchestrator.controller.client import ControllerClient
from orchestrator.controller.deployment import ConfigUpdater, settings_from_config
from orchestrator.controller.host import ControllerHost
from orchestrator.controller.router import Router
from orchestrator.controller.settings import ControllerSettings
from policies.cluster_view import RequestMeta

from .conftest import tiny_config_yaml

REPORT_S = 0.1


class FakeReplicaBackend:
    """The RayBackend seam: each "replica" is a load reporter speaking real gRPC."""

    def __init__(self) -> None:
        self.reporters: dict[str, LoadReporter] = {}
        self.loads: dict[str, LoadSnapshot] = {}
        self.created: list[str] = []
        self.fail_next = 0  # makes the next calls raise, as a flaky Ray would
        self.broken = False  # replicas die while starting
        self._lock = threading.Lock()

    def create_replica(self, replica_id: str, settings: ControllerSettings, address: str) -> None:
        self._maybe_fail()
        self.created.append(replica_id)
        if self.broken:
            return  # its "constructor" fails: it never registers and is not alive
        self.loads[replica_id] = _load(replica_id)
        reporter = LoadReporter(
            lambda: self.loads[replica_id], ControllerLink(address, timeout_s=1.0), REPORT_S
        )
        self.reporters[replica_id] = reporter
        reporter.start()

    def list_replicas(self) -> list[str]:
        self._maybe_fail()
        return sorted(self.reporters)

    def is_alive(self, replica_id: str) -> bool:
        return replica_id in self.reporters

    def kill_replica(self, replica_id: str) -> None:
        reporter = self.reporters.pop(replica_id, None)
        if reporter is not None:
            reporter.stop()

    def relink(self, address: str) -> None:
        """The controller moved (restart): replicas find it, as ControllerLocator would."""
        for replica_id in list(self.reporters):
            self.reporters.pop(replica_id).stop()
            reporter = LoadReporter(
                lambda rid=replica_id: self.loads[rid], ControllerLink(address), REPORT_S
            )
            self.reporters[replica_id] = reporter
            reporter.start()

    def _maybe_fail(self) -> None:
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                raise RuntimeError("injected backend failure")


def _load(replica_id: str, running: int = 0) -> LoadSnapshot:
    return LoadSnapshot(
        replica_id=replica_id,
        address=f"127.0.0.1:{abs(hash(replica_id)) % 50000 + 10000}",
        seq=int(time.monotonic() * 1e6),
        running=running,
        waiting=0,
        kv_blocks_free=1000,
        kv_blocks_total=1000,
        block_size=16,
        tokens_in_flight=0,
        step_time_ms=1.0,
        max_running=16,
        incarnation="i-" + replica_id,
    )


def _settings(replicas: int = 2) -> tuple[ControllerSettings, ConfigUpdater]:
    cfg = parse_config(
        tiny_config_yaml(replicas, report_interval_s=REPORT_S, unhealthy_after_s=1.0)
    )
    settings = settings_from_config(cfg)
    fast = ControllerSettings(
        **{
            **settings.__dict__,
            "reconcile_interval_s": 0.05,
            "dead_after_s": 0.3,
            "watch_min_interval_s": 0.01,
        }
    )
    return fast, ConfigUpdater(cfg)


def _wait(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)  # polls the controller under test


@pytest.fixture
def controller() -> Iterator[tuple[ControllerHost, FakeReplicaBackend, ControllerClient]]:
    backend = FakeReplicaBackend()
    settings, updater = _settings()
    host = ControllerHost(settings, backend, updater)
    client = ControllerClient(host.address)
    yield host, backend, client
    client.close()
    host.stop()
    for replica_id in list(backend.reporters):
        backend.kill_replica(replica_id)


def _healthy(client: ControllerClient) -> list[str]:
    return [r.replica_id for r in client.cluster_view().healthy()]


def _meta(i: int) -> RequestMeta:
    return RequestMeta(request_id=f"q{i}", num_prompt_tokens=10, max_tokens=10)


def test_reconciler_converges_and_routes_spread(controller: tuple) -> None:
    host, backend, client = controller
    _wait(lambda: len(_healthy(client)) == 2)
    assert len(backend.created) == 2
    picks = [client.route(_meta(i)) for i in range(4)]
    assert all(p is not None for p in picks)
    # In-flight dispatches count before the next report: least_load alternates.
    assert {p.replica_id for p in picks[:2]} == set(backend.created)
    assert picks[0].address == host.state.view().get(picks[0].replica_id).address
    assert client.status()["num_routes"] == 4


def test_dead_replica_marked_unhealthy_then_replaced(controller: tuple) -> None:
    host, backend, client = controller
    _wait(lambda: len(_healthy(client)) == 2)
    victim = backend.created[0]
    backend.kill_replica(victim)
    _wait(lambda: victim not in _healthy(client) or victim not in host.replica_ids())
    # No dispatch goes to it meanwhile, and the reconciler replaces it.
    _wait(lambda: len(backend.created) == 3 and len(_healthy(client)) == 2)
    assert victim not in host.replica_ids()
    assert all(client.route(_meta(i)).replica_id != victim for i in range(6))


def test_reconciler_survives_backend_errors(controller: tuple) -> None:
    host, backend, client = controller
    _wait(lambda: len(_healthy(client)) == 2)
    backend.fail_next = 3
    backend.kill_replica(backend.created[0])
    _wait(lambda: host.reconciler.failed_ticks >= 1)
    _wait(lambda: len(backend.created) == 3 and len(_healthy(client)) == 2)


def test_replicas_that_die_starting_back_off() -> None:
    backend = FakeReplicaBackend()
    backend.broken = True
    settings, updater = _settings()
    host = ControllerHost(settings, backend, updater)
    client = ControllerClient(host.address)
    try:
        _wait(lambda: client.status()["reconciler"]["start_failures"] >= 1)
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


def test_apply_config_valid_invalid_and_scale(controller: tuple) -> None:
    host, backend, client = controller
    _wait(lambda: len(_healthy(client)) == 2)
    ok, message = client.apply_config("dispatch:\n  policy: no_such_policy\n")
    assert not ok and "dispatch.policy" in message
    ok, message = client.apply_config("model:\n  path: other-model\n")
    assert not ok and "model.path" in message
    assert client.view_update().policy_name == "least_load"
    ok, message = client.apply_config("dispatch:\n  policy: round_robin\n")
    assert ok, message
    update = client.view_update()
    assert update.policy_name == "round_robin" and update.policy_params["max_queue"] == 64
    ok, message = client.apply_config("replicas:\n  count: 3\n")
    assert ok and "3 replicas" in message
    _wait(lambda: len(_healthy(client)) == 3)
    assert client.status()["policy"]["name"] == "round_robin"
    ok, _ = client.apply_config("replicas:\n  count: 1\n")
    assert ok
    _wait(lambda: len(backend.reporters) == 1 and len(_healthy(client)) == 1)
    assert client.status()["desired_replicas"] == 1


def test_restarted_controller_rebuilds_from_registrations() -> None:
    backend = FakeReplicaBackend()
    settings, updater = _settings()
    first = ControllerHost(settings, backend, updater)
    client = ControllerClient(first.address)
    try:
        _wait(lambda: len(_healthy(client)) == 2)
        ids = sorted(backend.created)
    finally:
        client.close()
        first.stop()
    second = ControllerHost(settings, backend, updater)
    backend.relink(second.address)
    client = ControllerClient(second.address)
    try:
        _wait(lambda: len(_healthy(client)) == 2)
        assert sorted(_healthy(client)) == ids
        assert backend.created == ids or sorted(backend.created) == ids  # nothing new created
    finally:
        client.close()
        second.stop()
        for replica_id in list(backend.reporters):
            backend.kill_replica(replica_id)


def test_router_routes_locally_and_falls_back(controller: tuple) -> None:
    host, backend, client = controller
    _wait(lambda: len(_healthy(client)) == 2)

    async def run() -> None:
        router = Router(host.address, reconnect_s=0.05)
        await router.start(wait_s=5)
        try:
            assert router.connected and router.view is not None
            picks = [await router.route(_meta(i)) for i in range(4)]
            assert {p.replica_id for p in picks[:2]} == set(backend.created)
            # Busy replica 0 reports high load: new requests go to replica 1.
            busy, idle = backend.created
            backend.loads[busy] = _load(busy, running=16)
            await _until(lambda: (router.view.get(busy) or _load(busy)).running == 16)
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


async def _until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
