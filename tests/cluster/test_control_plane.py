"""The control plane on a local Ray: controller actor, replica actors, real gRPC, the admin API
over real HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest
import ray

from actors.common.replica_client import ReplicaClient, ReplicaUnavailable
from actors.common.sampling_params import SamplingParams
from actors.common.types import GenerateDelta, GenerateSpec
from orchestrator.admin.client import AdminClient, AdminError
from orchestrator.config.load import parse_config
from orchestrator.controller.launcher import ClusterHandle, start_cluster
from orchestrator.controller.settings import CONTROLLER_NAME, NAMESPACE, REPLICA_NAME_PREFIX

from .conftest import generate_following, tiny_config_yaml

GREEDY = SamplingParams(temperature=0.0, max_tokens=120, ignore_eos=True)


@pytest.fixture(scope="module")
def cluster(ray_local: None) -> Iterator[ClusterHandle]:
    handle = start_cluster(
        parse_config(tiny_config_yaml(2)), min_healthy=2, wait_s=180, admin_port=0
    )
    yield handle
    handle.shutdown()


def _wait(predicate: Callable[[], bool], timeout_s: float, what: object = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what() if callable(what) else what
        time.sleep(0.1)  # polls the controller while the cluster changes


def _ready(admin: AdminClient) -> list[dict]:
    return [r for r in admin.replicas()["replicas"] if r["state"] == "ready"]


async def _generate(
    cluster: ClusterHandle, address: str, request_id: str, params: SamplingParams
) -> list[GenerateDelta]:
    # Followed where it moves: scale-in empties replicas by live migration.
    spec = GenerateSpec(request_id, (3, 4, 5), params)
    return await generate_following(address, spec, security=cluster.security)


def _tokens(deltas: list[GenerateDelta]) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


def test_registers_and_the_admin_api_lists_replicas(cluster: ClusterHandle) -> None:
    assert len(cluster.replicas) == 2
    with cluster.admin() as admin:
        replicas = admin.replicas()["replicas"]
    assert {r["id"] for r in replicas} == {r.replica_id for r in cluster.replicas}
    for r in replicas:
        assert r["state"] == "ready" and r["pid"] > 0 and r["node"] and r["uptime_s"] > 0
        assert r["kv_blocks_total"] > 0 and r["address"].startswith("127.0.0.1:")
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    outputs = [
        _tokens(asyncio.run(_generate(cluster, r["address"], "cp-gen", params))) for r in replicas
    ]
    assert outputs[0] == outputs[1] and len(outputs[0]) == 4  # same model, greedy


def test_config_apply_refuses_invalid_keeps_old(cluster: ClusterHandle) -> None:
    with cluster.admin() as admin:
        with pytest.raises(AdminError) as bad:
            admin.apply_config("dispatch:\n  policy: [not, a, name]\n")
        assert bad.value.status == 400 and "dispatch.policy" in str(bad.value)
        assert admin.replicas()["policy"]["name"] == "least_load"
        admin.apply_config("dispatch:\n  policy: power_of_two\n")
        client = cluster.client()
        try:
            assert client.view_update().policy_name == "power_of_two"
        finally:
            client.close()
        admin.apply_config("dispatch:\n  policy: least_load\n")


def test_scale_out_then_in_loses_no_request(cluster: ClusterHandle) -> None:
    """2 -> 3 -> 1 with a request running on every replica: scale-in cordons the replicas it
    removes, moves their requests away (or lets them finish) and stops each only once empty,
    so every request completes, token-exact."""
    with cluster.admin() as admin:
        admin.scale(3)
        _wait(lambda: len(_ready(admin)) == 3, 120, admin.replicas)
        replicas = _ready(admin)
        expected = _tokens(asyncio.run(_generate(cluster, replicas[0]["address"], "ref", GREEDY)))

        async def run_all() -> list[list[GenerateDelta]]:
            streams = [
                asyncio.create_task(_generate(cluster, r["address"], f"scale-{i}", GREEDY))
                for i, r in enumerate(replicas)
            ]
            await asyncio.sleep(0.3)  # every request is running now
            await asyncio.to_thread(admin.scale, 1)
            return await asyncio.gather(*streams)

        results = asyncio.run(run_all())
        for deltas in results:
            assert _tokens(deltas) == expected and deltas[-1].finish_reason == "length"
        _wait(lambda: len(admin.replicas()["replicas"]) == 1, 60, admin.replicas)
        assert admin.replicas()["desired_replicas"] == 1
        events = admin.events(limit=1000)
        assert sum(e["kind"] == "replica_draining" for e in events) == 2
        assert sum("drained, stopped" in e["message"] for e in events) == 2
        admin.scale(2)  # back to the module's shape for the tests after this one
        _wait(lambda: len(_ready(admin)) == 2, 120, admin.replicas)
        cluster.replicas = []  # the ids changed; later tests read the admin API


def test_killed_replica_goes_unhealthy_and_is_replaced(cluster: ClusterHandle) -> None:
    with cluster.admin() as admin:
        victim = _ready(admin)[0]
        # A request in flight on the victim fails with ReplicaUnavailable (ingress re-dispatches).
        assert asyncio.run(_generate_while_killed(cluster, victim["address"], victim["id"]))
        _wait(lambda: victim["id"] not in {r["id"] for r in _ready(admin)}, 10)
        # The reconciler replaces it to get back to two ready replicas.
        _wait(lambda: len(_ready(admin)) == 2, 90, admin.replicas)
        assert victim["id"] not in {r["id"] for r in admin.replicas()["replicas"]}


async def _generate_while_killed(cluster: ClusterHandle, address: str, replica_id: str) -> bool:
    client = ReplicaClient(address, cluster.security)
    params = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
    try:
        stream = client.generate(GenerateSpec("doomed", (3, 4, 5), params))
        await stream.__anext__()
        ray.kill(ray.get_actor(REPLICA_NAME_PREFIX + replica_id, namespace=NAMESPACE))
        async for _ in stream:
            pass
    except ReplicaUnavailable:
        return True
    finally:
        await client.close()
    return False


def test_restarted_controller_rebuilds_from_replicas(cluster: ClusterHandle) -> None:
    with cluster.admin() as admin:
        before = sorted(r["id"] for r in _ready(admin))
    assert len(before) == 2
    old_address = cluster.controller_address
    ray.kill(ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE), no_restart=False)
    deadline = time.monotonic() + 60
    while True:
        # ray.kill is asynchronous: the old process may still answer for a moment.
        try:
            actor = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
            address = ray.get(actor.grpc_address.remote(), timeout=60)
            if address != old_address:
                admin_url = ray.get(actor.admin_url.remote(), timeout=60)
                break
        except (ray.exceptions.RayError, ValueError):
            pass
        assert time.monotonic() < deadline
        time.sleep(0.2)  # the actor is restarting
    cluster.controller_address, cluster.admin_url = address, admin_url
    with cluster.admin() as admin:
        _wait(lambda: sorted(r["id"] for r in _ready(admin)) == before, 30, admin.replicas)
        assert len(admin.replicas()["replicas"]) == 2  # adopted, nothing new created
