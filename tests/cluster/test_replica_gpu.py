"""A GPU replica actor (num_gpus=1) over gRPC: greedy output equals the offline engine's."""

from __future__ import annotations

import asyncio

import pytest
import ray

from actors.common.config import CacheConfig, EngineConfig, ReplicaSpec
from actors.common.replica_client import ReplicaClient
from actors.common.sampling_params import SamplingParams
from actors.common.types import GenerateSpec
from actors.engine.engine import LLMEngine
from actors.replica.actor import ReplicaActor

pytestmark = pytest.mark.gpu

# A fixed small KV pool: the replica and the offline engine share the GPU.
ENGINE = EngineConfig(cache=CacheConfig(num_gpu_blocks_override=512), device="cuda")


def test_gpu_replica_matches_offline_engine(ray_local: None) -> None:
    actor = ray.remote(ReplicaActor).options(num_gpus=1).remote("r-gpu", ReplicaSpec(ENGINE), None)
    address = ray.get(actor.address.remote(), timeout=300)
    offline = LLMEngine(ENGINE)
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    prompts = [offline.tokenizer.encode(p) for p in ("GPU replicas", "serve tokens", "fast")]
    expected = [r.token_ids[0] for r in offline.generate(prompts, params)]

    async def run() -> list[list[int]]:
        client = ReplicaClient(address)
        try:
            specs = [GenerateSpec(f"g{i}", tuple(p), params) for i, p in enumerate(prompts)]
            return await asyncio.gather(*(_tokens(client, s) for s in specs))
        finally:
            await client.close()

    try:
        assert asyncio.run(run()) == expected
        stats = ray.get(actor.stats.remote())
        assert stats["kv_blocks_total"] == 512 and stats["num_steps"] > 0
    finally:
        ray.get(actor.shutdown.remote(), timeout=30)
        ray.kill(actor)


async def _tokens(client: ReplicaClient, spec: GenerateSpec) -> list[int]:
    return [t async for d in client.generate(spec) for t in d.token_ids]
