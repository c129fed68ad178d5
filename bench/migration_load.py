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

from bench.serving import add_deployment_args, deployment_yaml, run_stack, workload
from orchestrator.cli.loadgen import format_summary

MODES = {
    "migration": ("llumnix", True),
    "no-migration": ("llumnix", False),
    "round-robin": ("round_robin", False),
}


def deployment(model_dir: Path, args: argparse.Namespace, policy: str, migration: bool) -> str:
    """bench/serving.py's deployment, its replicas sharing one GPU with a fixed KV size each."""
    gpus = 0 if args.smoke else 1
    share = round(1 / args.replicas, 4) if gpus else 0
    overrides = {
        "replicas": {"resources": {"num_gpus": share}},
        "engine": {"num_kv_blocks": args.kv_blocks},
        "dispatch": {"policy": policy},
        "migration": {"enabled": migration},
        "server": {"admin_port": 0},
    }
    return deployment_yaml(model_dir, args, gpus, overrides)


def main() -> None:
    from bench.engine import make_model_dir
    from orchestrator.config.load import parse_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_deployment_args(ap)
    ap.set_defaults(input_mean=600.0, output_mean=300.0, max_model_len=8192, max_num_seqs=128)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--rate", type=float, default=8.0)
    ap.add_argument("--burstiness", type=float, default=0.25)
    ap.add_argument("--num-requests", type=int, default=400)
    ap.add_argument("--kv-blocks", type=int, default=6000, help="per replica (16 tokens each)")
    ap.add_argument("--modes", default=",".join(MODES))
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
    trace = workload(
        args, model_dir, args.rate, args.num_requests, arrival="gamma", burstiness=args.burstiness
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
