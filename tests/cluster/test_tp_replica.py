"""Tensor parallelism 2 on a local Ray (CPU, gloo): shard actors in a placement group.

- A ReplicaActor with tensor_parallel_size=2 serves greedy requests over gRPC, token for token
  what the single-shard offline engine produces.
- The sharded engine built in this process stops its shard actors cleanly on close: the workers
  leave their loops (their `run` returns the steps they ran) and the placement group is freed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import ray
from ray.util.placement_group import placement_group_table

from actors.common.config import (
    CacheConfig,
    EngineConfig,
    ModelConfig,
    ReplicaSpec,
    SchedulerConfig,
)
from actors.common.replica_client import ReplicaClient
from actors.common.sampling_params import SamplingParams
from actors.common.types import GenerateDelta, GenerateSpec
from actors.engine.engine import LLMEngine
from actors.replica.actor import ReplicaActor
from actors.replica.engine_factory import build_engine, close_engine
from actors.shard.runner import ShardedRunner

ENGINE = EngineConfig(
    cache=CacheConfig(cpu_kv_cache_bytes=8 << 20),
    scheduler=SchedulerConfig(max_num_batched_tokens=256, max_num_seqs=8),
    device="cpu",
)
PROMPTS = ["The quick brown fox", "Paged attention keeps KV in blocks", "hi"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def offline() -> LLMEngine:
    return LLMEngine(ENGINE)


@pytest.fixture(scope="module")
def tp_replica(ray_local: None) -> Iterator[str]:
    spec = ReplicaSpec(ENGINE, tensor_parallel_size=2)
    actor = ray.remote(ReplicaActor).options(num_cpus=1).remote("r-tp2", spec, None)
    address = ray.get(actor.address.remote(), timeout=120)
    yield address
    ray.get(actor.shutdown.remote(), timeout=30)
    ray.kill(actor)


async def _collect(address: str, specs: list[GenerateSpec]) -> list[list[GenerateDelta]]:
    client = ReplicaClient(address)
    try:

        async def one(spec: GenerateSpec) -> list[GenerateDelta]:
            return [d async for d in client.generate(spec)]

        return await asyncio.gather(*(one(s) for s in specs))
    finally:
        await client.close()


def test_tp2_replica_serves_like_the_offline_engine(tp_replica: str, offline: LLMEngine) -> None:
    prompt_ids = [offline.tokenizer.encode(p) for p in PROMPTS]
    expected = offline.generate(prompt_ids, GREEDY)
    specs = [GenerateSpec(f"tp{i}", tuple(ids), GREEDY) for i, ids in enumerate(prompt_ids)]
    results = asyncio.run(_collect(tp_replica, specs))
    for exp, deltas in zip(expected, results, strict=True):
        assert [t for d in deltas for t in d.token_ids] == exp.token_ids[0]
        assert "".join(d.text for d in deltas) == exp.texts[0]
        assert deltas[-1].finished and deltas[-1].finish_reason == "length"


def _live_placement_groups() -> int:
    return sum(pg["state"] == "CREATED" for pg in placement_group_table().values())


def test_sharded_engine_closes_its_shards(ray_local: None, offline: LLMEngine) -> None:
    before = _live_placement_groups()
    engine = build_engine(ReplicaSpec(ENGINE, tensor_parallel_size=2))
    assert _live_placement_groups() == before + 1
    runner = engine.runner
    assert isinstance(runner, ShardedRunner)
    ids = offline.tokenizer.encode(PROMPTS[1])
    got = engine.generate([ids], GREEDY)[0].token_ids[0]
    assert got == offline.generate([ids], GREEDY)[0].token_ids[0]
    released: list[int] = []
    runner.on_close(lambda: released.append(1))
    close_engine(engine)
    close_engine(engine)  # idempotent
    assert released == [1]  # close ran once; it waited for both workers' loops to end
    assert _live_placement_groups() == before  # the shard slots are back
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate([ids], GREEDY)


def test_bad_tensor_parallel_size_is_refused_before_any_actor(ray_local: None) -> None:
    with pytest.raises(ValueError, match=r"tensor_parallel_size: 3 does not divide"):
        build_engine(ReplicaSpec(ENGINE, tensor_parallel_size=3))


@pytest.mark.gpu
@pytest.mark.parametrize("eager", [True, False], ids=["eager", "cuda-graphs"])
def test_tp2_gpu_replica_matches_offline_engine(ray_local: None, eager: bool) -> None:
    """NCCL all-reduces (inside captured CUDA graphs unless eager), fp32: token-exact."""
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    engine = EngineConfig(
        model=ModelConfig(dtype="float32"),
        cache=CacheConfig(num_gpu_blocks_override=512),
        device="cuda",
        enforce_eager=eager,
    )
    spec = ReplicaSpec(engine, tensor_parallel_size=2)
    actor = ray.remote(ReplicaActor).options(num_gpus=1).remote("r-tp2-gpu", spec, None)
    try:
        address = ray.get(actor.address.remote(), timeout=300)
        offline = LLMEngine(engine)
        prompt_ids = [offline.tokenizer.encode(p) for p in PROMPTS]
        expected = [r.token_ids[0] for r in offline.generate(prompt_ids, GREEDY)]
        specs = [GenerateSpec(f"g{i}", tuple(ids), GREEDY) for i, ids in enumerate(prompt_ids)]
        results = asyncio.run(_collect(address, specs))
        assert [[t for d in ds for t in d.token_ids] for ds in results] == expected
    finally:
        ray.get(actor.shutdown.remote(), timeout=30)
        ray.kill(actor)
