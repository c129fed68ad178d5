"""The control plane on a local Ray: controller actor, two replica actors, real gRPC."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import ray

from actors.common.replica_client import ReplicaClient, ReplicaUnavailable
from actors.common.sampling_params import SamplingParams
from actors.common.types import GenerateSpec
from orchestrator.config.load import parse_config
from orchestrator.controller.client import ControllerClient
from orchestrator.controller.launcher import ClusterHandle, start_cluster
from orchestrator.controller.settings import CONTROLLER_NAME, NAMESPACE, REPLICA_NAME_PREFIX
from policies.cluster_view import RequestMeta

from .conftest import tiny_config_yaml


@pytest.fixture(scope="module")
def cluster(ray_local: None) -> Iterator[ClusterHandle]:
    handle = start_cluster(parse_config(tiny_config_yaml(2)), min_healthy=2, wait_s=180)
    yield handle
    handle.shutdown()


def _controller_client() -> ControllerClient:
    handle = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    return ControllerClient(ray.get(handle.grpc_address.remote(), timeout=60))


def _meta(i: int) -> RequestMeta:
    return RequestMeta(request_id=f"cp{i}", num_prompt_tokens=4, max_tokens=4)


def _wait_view(client: ControllerClient, predicate, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate(client.cluster_view()):
        assert time.monotonic() < deadline, client.status()
        time.sleep(0.1)  # polls the controller while the cluster changes


def test_registers_routes_and_generates(cluster: ClusterHandle) -> None:
    assert len(cluster.replicas) == 2
    assert len({r.address for r in cluster.replicas}) == 2
    client = cluster.client()
    try:
        picks = [client.route(_meta(i)) for i in range(2)]
        assert {p.replica_id for p in picks} == {r.replica_id for r in cluster.replicas}
        status = client.status()
        assert status["desired_replicas"] == 2
        assert all(r["registered"] and r["healthy"] for r in status["replicas"])
    finally:
        client.close()
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)

    async def generate(address: str) -> list[int]:
        replica = ReplicaClient(address)
        try:
            spec = GenerateSpec("cp-gen", (3, 4, 5), params)
            return [t async for d in replica.generate(spec) for t in d.token_ids]
        finally:
            await replica.close()

    outputs = [asyncio.run(generate(p.address)) for p in picks]
    assert outputs[0] == outputs[1] and len(outputs[0]) == 4  # same model, greedy


def test_config_apply_refuses_invalid_keeps_old(cluster: ClusterHandle) -> None:
    client = cluster.client()
    try:
        ok, message = client.apply_config("dispatch:\n  policy: [not, a, name]\n")
        assert not ok and "dispatch.policy" in message
        assert client.status()["policy"]["name"] == "least_load"
        ok, message = client.apply_config("dispatch:\n  policy: power_of_two\n")
        assert ok, message
        assert client.view_update().policy_name == "power_of_two"
        ok, _ = client.apply_config("dispatch:\n  policy: least_load\n")
        assert ok
    finally:
        client.close()


def test_killed_replica_goes_unhealthy_and_is_replaced(cluster: ClusterHandle) -> None:
    client = cluster.client()
    try:
        victim = cluster.replicas[0].replica_id
        # A request in flight on the victim fails with ReplicaUnavailable (ingress re-dispatches).
        assert asyncio.run(_generate_while_killed(cluster.replicas[0].address, victim))
        _wait_view(client, lambda v: v.get(victim) is None or not v.get(victim).healthy, 10)
        assert all(client.route(_meta(i)).replica_id != victim for i in range(4))
        # The reconciler replaces it to get back to two healthy replicas.
        _wait_view(client, lambda v: len(v.healthy()) == 2 and v.get(victim) is None, 90)
    finally:
        client.close()


async def _generate_while_killed(address: str, replica_id: str) -> bool:
    client = ReplicaClient(address)
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
    client = cluster.client()
    before = sorted(r.replica_id for r in client.cluster_view().healthy())
    old_address = client.address
    client.close()
    assert len(before) == 2
    ray.kill(ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE), no_restart=False)
    deadline = time.monotonic() + 60
    while True:
        # ray.kill is asynchronous: the old process may still answer for a moment.
        try:
            client = _controller_client()
            if client.address != old_address:
                break
            client.close()
        except (ray.exceptions.RayError, ValueError):
            pass
        assert time.monotonic() < deadline
        time.sleep(0.2)  # the actor is restarting
    try:
        _wait_view(client, lambda v: len(v.healthy()) == 2, 30)
        assert sorted(r.replica_id for r in client.cluster_view().healthy()) == before
        assert len(client.status()["replicas"]) == 2  # adopted, nothing new created
        assert client.route(_meta(99)).replica_id in before
    finally:
        client.close()
    cluster.controller_address = client.address
