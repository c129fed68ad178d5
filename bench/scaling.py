"""Throughput of the whole stack with 1 replica vs N replicas (one GPU each), same trace, one run.

  python bench/scaling.py [--model-shape llama3-8b] [--replicas 1,2] [--scenario inf:512]
                          [--ingress-replicas 2] [--out scaling.json]

Each replica count gets a fresh stack (`fleetlm serve`'s path: Ray, controller, replica actors,
Serve ingress) driven over HTTP by orchestrator.cli.loadgen with the same open-loop trace
(streaming, ignore_eos); reports output tokens/s per count and the ratio to the first count.
Issue 4's goal: 2 replicas >= 1.9x one replica.
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

from bench.serving import add_deployment_args, deployment_yaml, parse_scenarios, run_stack, workload
from orchestrator.cli.loadgen import format_summary


def main() -> None:
    from bench.engine import make_model_dir
    from orchestrator.config.load import parse_config

    ap = argparse.ArgumentParser()
    add_deployment_args(ap)
    ap.add_argument("--replicas", default="1,2")
    ap.add_argument("--ingress-replicas", type=int, default=2)
    ap.add_argument("--scenario", default="inf:512")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "scaling.json"))
    args = ap.parse_args()

    import torch

    gpus = torch.cuda.device_count()
    model_dir = make_model_dir(args.model_shape)
    (rate, n), *_ = parse_scenarios(args.scenario)
    trace = workload(args, model_dir, rate, n)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
        "gpus": gpus,
        "gpu": torch.cuda.get_device_name(0) if gpus else "cpu",
        "runs": [],
    }
    for count in (int(c) for c in args.replicas.split(",")):
        args.replicas = count  # deployment_yaml reads the count from args
        cfg = parse_config(deployment_yaml(model_dir, args, gpus), "<bench>")
        (summary,) = run_stack(cfg, [trace], args.ingress_replicas)
        report["runs"].append({"replicas": count, "summary": summary})
        print(f"-- {count} replica(s)\n{format_summary(summary)}", flush=True)
        Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    base = report["runs"][0]["summary"]["output_throughput"]
    for run in report["runs"]:
        run["throughput_vs_first"] = run["summary"]["output_throughput"] / base
        print(f"{run['replicas']} replica(s): {run['throughput_vs_first']:.3f}x", flush=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
