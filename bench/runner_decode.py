"""Decode step time of the ModelRunner alone (no scheduler/sampler), eager vs CUDA graphs.

  python bench/runner_decode.py [--model-shape llama3-8b] [--batches 1,32,128,256]
                                [--context 1024] [--steps 20] [--out runner_decode.json]

Builds the model with dummy bf16 weights, prefills `batch` random prompts of `context` tokens,
then times `steps` decode steps (median, CUDA-synchronized) and reports the fraction of the HBM
roofline: (weights + KV bytes read per step) / measured device copy bandwidth. Run on a GPU host.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.common.config import (
    CacheConfig,
    EngineConfig,
    ModelConfig,
    SchedulerConfig,
)
from actors.common.sampling_params import SamplingParams
from actors.engine.model_runner import ModelRunner
from actors.engine.outputs import ScheduledChunk, SchedulerOutput
from actors.engine.request import Request
from bench.engine import SHAPES, copy_bandwidth, kv_bytes_per_step, weight_bytes_per_step


def build_runner(model_dir: Path, graphs: bool, max_batch: int) -> tuple[ModelRunner, float]:
    config = EngineConfig(
        model=ModelConfig(model=str(model_dir), dtype="bfloat16", load_format="dummy"),
        cache=CacheConfig(gpu_memory_utilization=0.85),
        scheduler=SchedulerConfig(max_num_seqs=max_batch, max_num_batched_tokens=8192),
        device="cuda",
    )
    t0 = time.perf_counter()
    runner = ModelRunner(config, use_cuda_graphs=graphs)
    torch.cuda.synchronize()
    return runner, time.perf_counter() - t0


def prefill(runner: ModelRunner, reqs: list[Request], budget: int) -> None:
    bs = runner.block_size
    next_block = 0
    for r in reqs:
        n = -(-(r.num_tokens + 64) // bs)
        r.block_ids = list(range(next_block, next_block + n))
        next_block += n
    if next_block > runner.num_blocks:
        raise ValueError(f"need {next_block} KV blocks, the cache has {runner.num_blocks}")
    pending = list(reqs)
    while pending:
        chunks, used = [], 0
        while pending and used + pending[0].num_tokens <= budget:
            chunks.append(ScheduledChunk(pending[0], pending[0].num_tokens))
            used += pending.pop(0).num_tokens
        runner.execute(SchedulerOutput(chunks=chunks))
        for c in chunks:
            c.request.num_computed_tokens = c.request.num_tokens
            c.request.output_token_ids.append(1)


def time_decode(runner: ModelRunner, reqs: list[Request], steps: int) -> float:
    times = []
    for _ in range(steps):
        chunks = [ScheduledChunk(r, 1) for r in reqs]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        logits = runner.execute(SchedulerOutput(chunks=chunks))
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        assert logits.shape[0] == len(reqs)
        for r in reqs:
            r.num_computed_tokens += 1
            r.output_token_ids.append(1)
    return statistics.median(times[2:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--model-shape", default="llama3-8b", choices=[k for k, v in SHAPES.items() if v]
    )
    ap.add_argument("--batches", default="1,32,128,256")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--modes", default="eager,graphs")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "runner_decode.json"))
    args = ap.parse_args()
    cfg = SHAPES[args.model_shape]
    model_dir = Path(tempfile.mkdtemp(prefix="fleetlm-runner-"))
    (model_dir / "config.json").write_text(json.dumps(cfg))
    batches = [int(b) for b in args.batches.split(",")]
    device = torch.device("cuda")
    result: dict = {"gpu": torch.cuda.get_device_name(), "shape": args.model_shape}
    result["copy_bw_GBps"] = copy_bandwidth(device) / 1e9
    rng = random.Random(0)
    for mode in args.modes.split(","):
        runner, init_s = build_runner(model_dir, mode == "graphs", max(batches))
        rows = []
        for b in batches:
            reqs = [
                Request(f"{b}-{i}", [rng.randrange(cfg["vocab_size"]) for _ in range(args.context)],
                        SamplingParams(max_tokens=args.steps + 8))
                for i in range(b)
            ]  # fmt: skip
            prefill(runner, reqs, 8192)
            step_s = time_decode(runner, reqs, args.steps)
            ctx = [args.context + 1 + args.steps // 2] * b
            w = weight_bytes_per_step(runner.model, b)
            kv = kv_bytes_per_step(cfg, ctx, runner.dtype.itemsize)
            roof_ms = (w + kv) / (result["copy_bw_GBps"] * 1e9) * 1e3
            row = {"batch": b, "step_ms": step_s * 1e3, "roofline_ms": roof_ms,
                   "roofline_fraction": roof_ms / (step_s * 1e3)}  # fmt: skip
            rows.append(row)
            print(mode, row, flush=True)
        result[mode] = {"init_s": init_s, "kv_blocks": runner.num_blocks, "decode": rows}
        del runner
        gc.collect()
        torch.cuda.empty_cache()
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
