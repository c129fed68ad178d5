"""Bursty mixed load through the whole stack with migration on vs off vs round-robin (GPU host;
not a test). The replicas share one GPU (num_gpus 1/N each, a fixed KV size each, tight enough
for memory pressure); the same open-loop gamma-arrival trace of ShareGPT-like lengths (short and
long requests mixed) runs against each deployment, one after another:

  migration      dispatch llumnix, live migration with rebalancing (the default YAML)
  no-migration   dispatch llumnix, migration.enabled: false
  round-robin    dispatch round_robin, migration.enabled: false

  python bench/migration_load.py [--replicas 2] [--rate 8] [--burstiness 0.25] [--num-requests 400]
  python bench/migration_load.py --smoke    # tiny model, CPU replicas: checks the script only

Reports TTFT and TPOT p50/p99 per deployment and P99 TTFT of round-robin and of the best
dispatch-only deployment over migration's (issue 9's goal: >= 5x lower than round-robin, and lower
than the best dispatch-only policy).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.serving import run_stack
from orchestrator.cli.loadgen import WorkloadSpec, build_workload, format_summary

MODES = {
    "migration": ("llumnix", True),
    "no-migration": ("llumnix", False),
    "round-robin": ("round_robin", False),
}


def deployment(model_dir: Path, args: argparse.Namespace, policy: str, migration: bool) -> str:
    gpu = not args.smoke
    return f"""
model:
  path: {model_dir}
  served_model_name: bench-model
  dtype: {"bfloat16" if gpu else "float32"}
  load_format: {"dummy" if gpu else "auto"}
  max_model_len: {args.max_model_len}
replicas:
  count: {args.replicas}
  resources:
    num_cpus: 1
    num_gpus: {round(1 / args.replicas, 4) if gpu else 0}
engine:
  num_kv_blocks: {args.kv_blocks}
  max_num_batched_tokens: {args.max_num_batched_tokens}
  max_num_seqs: {args.max_num_seqs}
dispatch:
  policy: {policy}
migration:
  enabled: {str(migration).lower()}
server:
  http_port: {args.port}
  controller_grpc_port: 0
  admin_port: 0
  max_queue_per_replica: 100000
"""


def main() -> None:
    from bench.engine import make_model_dir
    from orchestrator.config.load import parse_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-shape", default="llama3-8b")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--rate", type=float, default=8.0)
    ap.add_argument("--burstiness", type=float, default=0.25)
    ap.add_argument("--num-requests", type=int, default=400)
    ap.add_argument("--input-mean", type=float, default=600.0)
    ap.add_argument("--output-mean", type=float, default=300.0)
    ap.add_argument("--max-model-len", type=int, default=8192)
    ap.add_argument("--kv-blocks", type=int, default=6000, help="per replica (16 tokens each)")
    ap.add_argument("--max-num-seqs", type=int, default=128)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument(
        "--out", default=os.path.join(os.environ.get("OUT", "."), "migration_load.json")
    )
    args = ap.parse_args()
    if args.smoke:
        args.model_shape, args.kv_blocks, args.max_model_len = "tiny", 96, 1024
        args.num_requests, args.rate, args.input_mean, args.output_mean = 24, 20.0, 60.0, 40.0
        args.max_num_seqs, args.max_num_batched_tokens = 16, 512

    model_dir = make_model_dir(args.model_shape)
    vocab = 260 if args.smoke else 128_000
    trace = build_workload(
        WorkloadSpec(
            num_requests=args.num_requests,
            rate=args.rate,
            arrival="gamma",
            burstiness=args.burstiness,
            input_mean=args.input_mean,
            output_mean=args.output_mean,
            max_model_len=args.max_model_len,
            vocab_size=vocab,
        )
    )
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["python3", *sys.argv]),
        "runs": {},
    }
    for mode in args.modes.split(","):
        policy, migration = MODES[mode]
        cfg = parse_config(deployment(model_dir, args, policy, migration), f"<{mode}>")
        (summary,) = run_stack(cfg, [trace], ingress_replicas=1)
        report["runs"][mode] = summary
        print(f"-- {mode}\n{format_summary(summary)}", flush=True)
        Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    runs = report["runs"]
    if "migration" in runs:
        p99 = {m: s["ttft_ms"]["p99"] for m, s in runs.items()}
        mine = max(p99["migration"], 1e-9)
        report["p99_ttft_vs_migration"] = {m: v / mine for m, v in p99.items()}
        print(json.dumps(report["p99_ttft_vs_migration"]), flush=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
