"""Tensor parallelism 2 on CPU (gloo) against one shard: same logits, same greedy tokens.

Both ranks run in spawned processes (a process group per test, nothing left in pytest's own
process). Rank 0 drives an LLMEngine over a ShardedRunner; rank 1 follows its broadcasts.
"""

from __future__ import annotations

import copy
import multiprocessing as mp
import random
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from actors.common.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from actors.common.sampling_params import SamplingParams
from actors.engine.engine import LLMEngine
from actors.engine.input_batch import pack_batch
from actors.engine.model_runner import ModelRunner
from actors.models.config import load_arch_config
from actors.models.loader import load_model
from actors.shard.context import ShardContext
from actors.shard.sharding import check_tensor_parallel, shard_model

LOGITS_ATOL = 1e-4
GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
MIGRATING = SamplingParams(temperature=0.7, seed=3, max_tokens=20, ignore_eos=True)
TIMEOUT_S = 120
KV_BLOCKS = [0, 1, 2]  # hold the requests' KV; TP1 and TP2 schedule (and allocate) alike
MOVED_BLOCKS = [3, 4, 5]  # overwritten by the import once every request finished


def engine_config(path: Path, **knobs: Any) -> EngineConfig:
    """`knobs`: CacheConfig and SchedulerConfig fields (64 KV blocks unless given)."""
    cache = {k: v for k, v in knobs.items() if k in CacheConfig.__dataclass_fields__}
    sched = {k: v for k, v in knobs.items() if k in SchedulerConfig.__dataclass_fields__}
    return EngineConfig(
        model=ModelConfig(model=str(path), dtype="float32"),
        cache=CacheConfig(**{"num_gpu_blocks_override": 64, **cache}),
        scheduler=SchedulerConfig(**sched),
        device="cpu",
    )


def prompts() -> list[list[int]]:
    rng = random.Random(4)
    return [[rng.randrange(4, 260) for _ in range(n)] for n in (3, 19, 40, 9)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _forward_logits(model: torch.nn.Module, kv_heads: int, token_ids: list[int]) -> torch.Tensor:
    """One prefill of `token_ids` over a fresh cache; logits of every row [T, V]."""
    arch = model.config
    bs, n = 16, len(token_ids)
    nblk = -(-n // bs)
    batch = pack_batch(
        token_ids=token_ids,
        starts=[0],
        q_lens=[n],
        block_tables=[list(range(nblk))],
        sampled=[0],
        block_size=bs,
        device=torch.device("cpu"),
    )
    kv = torch.zeros(arch.num_layers, 2, nblk, bs, kv_heads, arch.head_dim)
    caches = [(layer[0], layer[1]) for layer in kv]
    with torch.inference_mode():
        hidden = model(batch.input_ids, batch.positions, batch.attn, caches)  # [T, H]
        return model.compute_logits(hidden)  # [T, V]


def _rank_main(
    rank: int, port: int, path: str, knobs: dict[str, Any], queue: Any, migrate: bool = False
) -> None:
    """One shard's process: logits checks, then the engine (rank 0) or the follower loop.

    `migrate`: rank 0 instead runs one request a few steps, then exports it as a migration's
    source does (paused, state, KV of all heads) and releases it."""
    from actors.shard.context import init_shard_group
    from actors.shard.loader import load_sharded_model
    from actors.shard.parallel import ShardParallel
    from actors.shard.runner import ShardedRunner, follow

    try:
        ctx = init_shard_group("gloo", f"tcp://127.0.0.1:{port}", rank, 2, timeout_s=TIMEOUT_S)
        arch = load_arch_config(Path(path))
        cpu = torch.device("cpu")
        full = load_model(path, arch, dtype=torch.float32, device=cpu)
        ids = prompts()[2]
        want = _forward_logits(full, arch.num_kv_heads, ids)
        # gpt-fast style: shard the loaded model; and the per-rank slice loader.
        passed = shard_model(copy.deepcopy(full), ctx)
        sliced = load_sharded_model(path, arch, dtype=torch.float32, device=cpu, ctx=ctx)
        heads = arch.num_kv_heads // 2
        diffs = [
            (_forward_logits(m, heads, ids) - want).abs().max().item() for m in (passed, sliced)
        ]
        config = engine_config(Path(path), **knobs)
        if rank == 0 and migrate:
            runner = ShardedRunner(config, ctx)
            engine = LLMEngine(config, runner=runner)
            engine.add_request("moving", prompts()[1], MIGRATING)
            produced = [t for _ in range(5) for o in engine.step() for t in o.new_token_ids]
            engine.pause_request("moving")
            blocks, _ = engine.migration_blocks("moving")
            state = engine.export_request("moving")
            kv = runner.export_blocks(blocks)  # all heads, gathered from both ranks
            engine.release_request("moving")
            runner.close()
            queue.put(("ok", rank, diffs, (state, kv.numpy(), produced), None))
        elif rank == 0:
            runner = ShardedRunner(config, ctx)
            engine = LLMEngine(config, runner=runner)
            tokens = [r.token_ids[0] for r in engine.generate(prompts(), GREEDY)]
            kv_shape = tuple(runner.kv_cache.shape)
            with pytest.raises(ValueError, match="block_ids"):
                runner.export_blocks([10_000])  # refused on rank 0, before any collective
            kv = runner.export_blocks(KV_BLOCKS)  # all heads, gathered from both ranks
            runner.import_blocks(MOVED_BLOCKS, kv)
            round_trip = bool(torch.equal(runner.export_blocks(MOVED_BLOCKS), kv))
            runner.close()
            # numpy pickles by value; a tensor would travel as a shared fd of an exiting process.
            preempted = engine.scheduler.num_preemptions
            queue.put(("ok", rank, diffs, (tokens, kv.numpy(), round_trip, preempted), kv_shape))
        else:
            steps = follow(ModelRunner(config, tensor_parallel=ShardParallel(ctx)), ctx)
            queue.put(("ok", rank, diffs, steps, None))
    except BaseException as exc:  # report any failure to the test instead of hanging it
        queue.put(("error", rank, repr(exc), None, None))
        raise


def run_tp2(path: Path, migrate: bool = False, **knobs: Any) -> dict[int, tuple]:
    spawn = mp.get_context("spawn")
    queue = spawn.Queue()
    port = _free_port()
    procs = [
        spawn.Process(target=_rank_main, args=(r, port, str(path), knobs, queue, migrate))
        for r in (0, 1)
    ]
    for p in procs:
        p.start()
    try:
        results = {}
        for _ in procs:
            status, rank, *rest = queue.get(timeout=TIMEOUT_S)
            assert status == "ok", f"rank {rank} failed: {rest[0]}"
            results[rank] = tuple(rest)
        for p in procs:
            p.join(timeout=30)
            assert p.exitcode == 0
        return results
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()


@pytest.mark.parametrize(
    ("arch", "knobs"),
    [
        ("llama_bias", {}),
        ("qwen3", {"max_num_batched_tokens": 7}),  # chunked prefill mixed with decodes
        # 14 blocks of 4 tokens cannot hold the 4 requests as they grow: swap preemption
        # moves KV on every rank.
        (
            "llama",
            {
                "block_size": 4,
                "num_gpu_blocks_override": 14,
                "preemption_mode": "swap",
                "swap_space_bytes": 1 << 20,
            },
        ),
    ],
    ids=["bias", "chunked", "swap"],
)
def test_tp2_matches_tp1(
    arch: str, knobs: dict[str, Any], tiny_checkpoint: Callable[[str], Path]
) -> None:
    path = tiny_checkpoint(arch)
    tp1 = LLMEngine(engine_config(path, **knobs))
    want = [r.token_ids[0] for r in tp1.generate(prompts(), GREEDY)]
    results = run_tp2(path, **knobs)
    for rank in (0, 1):
        pass_diff, slice_diff = results[rank][0]
        assert pass_diff < LOGITS_ATOL, f"rank {rank}: sharding pass logits off by {pass_diff}"
        assert slice_diff < LOGITS_ATOL, f"rank {rank}: sliced loader logits off by {slice_diff}"
    _, (tokens, kv_array, round_trip, preempted), kv_shape = results[0]
    kv = torch.from_numpy(kv_array)
    assert tokens == want
    # Migration seam: the gathered KV (all heads) is the single-shard KV; import scatters back.
    assert kv.abs().max() > 0  # the blocks hold the requests' KV
    torch.testing.assert_close(kv, tp1.runner.export_blocks(KV_BLOCKS), atol=1e-4, rtol=0)
    assert round_trip
    assert preempted == tp1.scheduler.num_preemptions
    if knobs.get("preemption_mode") == "swap":
        assert preempted > 0
    cfg = load_arch_config(path)
    assert kv_shape[4] == cfg.num_kv_heads // 2  # [L, 2, blocks, block_size, Hkv / N, D]
    assert results[1][1] > 0  # the follower ran the steps


def test_a_request_migrates_from_tp2_to_tp1(tiny_checkpoint: Callable[[str], Path]) -> None:
    """Migration across tensor-parallel sizes: the source (TP 2, gloo) gathers each rank's heads,
    the destination (one shard) takes the whole KV; seeded sampling continues exactly."""
    path = tiny_checkpoint("llama")
    reference = LLMEngine(engine_config(path))
    want = reference.generate([prompts()[1]], MIGRATING)[0].token_ids[0]
    state, kv_array, produced = run_tp2(path, migrate=True)[0][1]
    dst = LLMEngine(engine_config(path))
    blocks = dst.reserve_blocks(kv_array.shape[2])
    assert blocks is not None
    dst.runner.import_blocks(blocks, torch.from_numpy(kv_array))
    dst.import_request(state, blocks)
    rest = []
    while dst.has_unfinished_requests():
        rest += [t for o in dst.step() for t in o.new_token_ids]
    assert produced + rest == want


def test_sharding_rejects_sizes_that_do_not_divide(tiny_checkpoint: Callable[[str], Path]) -> None:
    arch = load_arch_config(tiny_checkpoint("llama"))  # 4 heads, 2 KV heads, intermediate 128
    with pytest.raises(ValueError, match=r"tensor_parallel_size: 4 does not divide .*num_kv_heads"):
        check_tensor_parallel(arch, 4)
    with pytest.raises(ValueError, match=r"tensor_parallel_size: 3 does not divide .*num_heads"):
        check_tensor_parallel(arch, 3)
    with pytest.raises(ValueError, match=r"tensor_parallel_size: must be >= 1"):
        check_tensor_parallel(arch, 0)
    model = load_model(
        tiny_checkpoint("llama"), arch, dtype=torch.float32, device=torch.device("cpu")
    )
    with pytest.raises(ValueError, match="tensor_parallel_size: 4"):
        shard_model(model, ShardContext(rank=0, world_size=4))
    with pytest.raises(ValueError, match=r"rank: must be in \[0, 2\)"):
        ShardContext(rank=2, world_size=2)
