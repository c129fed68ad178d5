"""Two Ray nodes (ray.cluster_utils.Cluster), one replica pinned to each by a custom resource."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import ray
from ray.cluster_utils import Cluster

from actors.common.replica_client import ReplicaClient
from actors.common.sampling_params import SamplingParams
from actors.common.types import GenerateDelta, GenerateSpec
from orchestrator.config.load import parse_config
from orchestrator.controller.launcher import ClusterHandle, start_cluster
from orchestrator.controller.router import Router
from policies.cluster_view import RequestMeta

from .conftest import generate_following, tiny_config_yaml

SLOT = "fleetlm_test_slot"  # each node has one: one replica per node


@pytest.fixture(scope="module")
def two_nodes(_ray_session: None) -> Iterator[ClusterHandle]:
    if ray.is_initialized():
        ray.shutdown()  # the shared local Ray; the next module that needs it starts it again
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {SLOT: 1}})
    nodes.add_node(num_cpus=2, resources={SLOT: 1})
    ray.init(address=nodes.address, namespace="fleetlm", log_to_driver=False)
    nodes.wait_for_nodes()
    handle = None
    try:
        # A wildcard bind: replicas and the controller advertise the node IP from Ray.
        cfg = parse_config(tiny_config_yaml(2, policy="round_robin", host="0.0.0.0"))
        handle = start_cluster(
            cfg, custom_resources={SLOT: 1}, min_healthy=2, wait_s=180, admin_port=0
        )
        yield handle
    finally:
        if handle is not None:
            handle.shutdown()
        ray.shutdown()
        nodes.shutdown()


def test_one_replica_per_node_and_requests_spread(two_nodes: ClusterHandle) -> None:
    replicas = two_nodes.replicas
    assert len(replicas) == 2
    assert len({r.node_id for r in replicas}) == 2, replicas
    assert {r.node_id for r in replicas} <= {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert not any(r.address.startswith("0.0.0.0") for r in replicas)
    assert not two_nodes.controller_address.startswith("0.0.0.0")
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)

    async def run() -> tuple[Counter, list[int], list[list[int]]]:
        router = Router(two_nodes.controller_address, security=two_nodes.security)
        await router.start(wait_s=10)
        clients = {r.address: ReplicaClient(r.address, two_nodes.security) for r in replicas}
        try:
            picks = [
                await router.route(RequestMeta(f"mn{i}", num_prompt_tokens=3, max_tokens=3))
                for i in range(6)
            ]
            specs = [GenerateSpec(f"mn{i}", (7, 8, 9), params) for i in range(6)]
            outs = await asyncio.gather(
                *(_tokens(clients[p.address], s) for p, s in zip(picks, specs, strict=True))
            )
            with two_nodes.admin() as admin:  # the replicas' own reports, over the admin API
                deadline = time.monotonic() + 10
                while True:  # the steps just run are counted with each replica's next report
                    loads = (await asyncio.to_thread(admin.replicas))["replicas"]
                    if all(r["num_steps"] > 0 for r in loads) or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.2)  # polls the admin API
            return Counter(p.replica_id for p in picks), [r["num_steps"] for r in loads], outs
        finally:
            await router.close()
            for client in clients.values():
                await client.close()

    counts, steps, outs = asyncio.run(run())
    assert counts == Counter({r.replica_id: 3 for r in replicas})  # round_robin over 2 nodes
    assert all(n > 0 for n in steps)  # both replicas did the work
    assert all(o == outs[0] and len(o) == 3 for o in outs)


async def _tokens(client: ReplicaClient, spec: GenerateSpec) -> list[int]:
    return [t async for d in client.generate(spec) for t in d.token_ids]


def test_drain_moves_requests_to_the_other_node(two_nodes: ClusterHandle) -> None:
    """A drain across nodes: the requests on one node's replica move to the other's (the host
    transport), their streams follow them, and every token is what an unmoved run gives."""
    # Long enough to be running still when the drain's cordon lands (reports every 0.25 s).
    params = SamplingParams(temperature=0.0, max_tokens=1000, ignore_eos=True)
    prompts = [(7, 8, 9, i + 10) for i in range(3)]
    with two_nodes.admin() as admin:
        source, target = admin.replicas()["replicas"]

    async def follow(spec: GenerateSpec, started: asyncio.Event) -> list[int]:
        tokens: list[int] = []

        def seen(d: GenerateDelta) -> None:
            tokens.extend(d.token_ids)
            if len(tokens) >= 3:
                started.set()

        await generate_following(source["address"], spec, seen, two_nodes.security)
        return tokens

    async def run() -> tuple[list[list[int]], list[list[int]]]:
        reference_client = ReplicaClient(target["address"], two_nodes.security)

        async def unmoved(i: int, p: tuple[int, ...]) -> list[int]:
            spec = GenerateSpec(f"ref{i}", p, params)
            return [t async for d in reference_client.generate(spec) for t in d.token_ids]

        try:
            reference = await asyncio.gather(*(unmoved(i, p) for i, p in enumerate(prompts)))
        finally:
            await reference_client.close()
        started = asyncio.Event()
        streams = [
            asyncio.create_task(follow(GenerateSpec(f"mn-drain-{i}", p, params), started))
            for i, p in enumerate(prompts)
        ]
        await started.wait()
        with two_nodes.admin() as admin:
            await asyncio.to_thread(admin.drain, source["id"])
        return await asyncio.gather(*streams), reference

    got, reference = asyncio.run(run())
    assert got == reference
    with two_nodes.admin() as admin:
        moved = [m for m in admin.migrations() if m["outcome"] == "committed"]
        assert moved and all(m["target"] == target["address"] for m in moved)
        assert all(m["target_replica"] == target["id"] for m in moved)
        admin.uncordon(source["id"])
