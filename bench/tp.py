"""Tensor parallelism 2 vs 1: decode step time and workload throughput (run on a 2-GPU host).

  python bench/tp.py [--model-shape llama3-8b] [--tp 1,2] [--batches 1,32,128]
                     [--context 1024] [--steps 20] [--requests 500] [--eager]
                     [--out $OUT/tp.json]

Each TP size runs in a fresh Ray actor holding one GPU (rank 0: scheduler, sampler, engine loop)
which builds the engine through `build_engine(ReplicaSpec(..., tensor_parallel_size=N))`, so
ranks 1..N-1 are real shard actors in a STRICT_PACK placement group, exactly as in a replica.
Dummy bf16 weights of an 8B Llama shape; decode timing and the ShareGPT-like workload come from
bench/engine.py. `--model-shape tiny --device cpu` is a smoke run on CPU (gloo).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.common.config import (
    CacheConfig,
    EngineConfig,
    ModelConfig,
    ReplicaSpec,
    SchedulerConfig,
)
from actors.replica.engine_factory import build_engine, close_engine
from bench.engine import SHAPES, bench_decode, bench_engine_workload, make_model_dir, sharegpt_like


class TpBenchHost:
    """Rank 0 of one TP size: builds the sharded engine, runs decode + workload, closes it."""

    def run(self, args: argparse.Namespace, model_dir: str, tp: int) -> dict:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        on_gpu = args.device == "cuda"
        batches = [int(b) for b in args.batches.split(",")]
        config = EngineConfig(
            model=ModelConfig(
                model=model_dir, dtype="bfloat16" if on_gpu else "float32", load_format="dummy"
            ),
            cache=CacheConfig(gpu_memory_utilization=args.gpu_memory_utilization),
            scheduler=SchedulerConfig(max_num_seqs=max(256, *batches), max_num_batched_tokens=8192),
            device=args.device,
            enforce_eager=args.eager,
        )
        t0 = time.perf_counter()
        engine = build_engine(ReplicaSpec(config, tensor_parallel_size=tp))
        result: dict = {"tp": tp, "init_s": time.perf_counter() - t0}
        result["kv_blocks"] = engine.block_manager.num_total_blocks
        try:
            # Each rank reads its share of the KV heads (the weights are counted from rank 0's).
            rank_cfg = {**cfg, "num_key_value_heads": cfg["num_key_value_heads"] // tp}
            result["decode"] = [
                bench_decode(engine, rank_cfg, b, args.context, args.steps) for b in batches
            ]
            lengths = sharegpt_like(args.requests, 0, 200, 180)
            result["workload"] = bench_engine_workload(engine, lengths, cfg["vocab_size"])
        finally:
            try:
                close_engine(engine)
            except Exception as exc:  # the figures are taken; report a failed shutdown beside them
                result["close_error"] = repr(exc)
        return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-shape", default="llama3-8b", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tp", default="1,2")
    ap.add_argument("--batches", default="1,32,128")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    ap.add_argument("--eager", action="store_true", help="no CUDA graphs on any rank")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "tp.json"))
    args = ap.parse_args()
    sizes = [int(t) for t in args.tp.split(",")]
    on_gpu = args.device == "cuda"
    ray.init(num_cpus=max(sizes) + 2, include_dashboard=False)
    model_dir = str(make_model_dir(args.model_shape))
    result: dict = {
        "shape": args.model_shape,
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
        "runs": [],
    }
    for tp in sizes:
        host = ray.remote(TpBenchHost).options(num_gpus=1 if on_gpu else 0, num_cpus=1).remote()
        run = ray.get(host.run.remote(args, model_dir, tp))
        ray.kill(host)
        print(json.dumps(run), flush=True)
        result["runs"].append(run)
        Path(args.out).write_text(json.dumps(result, indent=2))  # partial results survive a crash
    by_tp = {r["tp"]: r for r in result["runs"]}
    if 1 in by_tp:
        base = by_tp[1]
        for tp, run in by_tp.items():
            run["decode_speedup_vs_tp1"] = [
                b["step_ms"] / r["step_ms"]
                for b, r in zip(base["decode"], run["decode"], strict=True)
            ]
            run["throughput_vs_tp1"] = (
                run["workload"]["tokens_per_s"] / base["workload"]["tokens_per_s"]
            )
            print("tp", tp, run["decode_speedup_vs_tp1"], run["throughput_vs_tp1"], flush=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
