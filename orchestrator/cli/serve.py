"""`fleetlm serve` and `fleetlm bench`."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import sys
import threading
from pathlib import Path

DEFAULT_RESULT = "bench/results/result.json"
RAY_CHECK_S = 1.0  # how often `fleetlm serve` checks that Ray is still there
RAY_MISSES = 3  # checks in a row without Ray's GCS before it gives up


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="start the cluster and the OpenAI API (foreground)")
    p.add_argument("--config", default=None, help="deployment YAML (default: the default preset)")
    p.add_argument("--address", default=None, help="join this Ray cluster instead of a local one")
    p.add_argument("--port", type=int, default=None, help="HTTP port (overrides the config)")
    p.add_argument("--host", default=None, help="HTTP host (overrides the config)")
    p.add_argument(
        "--ingress-replicas", type=int, default=1, help="Serve replicas of the HTTP ingress"
    )
    p.add_argument(
        "--admin-port", type=int, default=None, help="admin API port (overrides the config)"
    )
    p.set_defaults(func=run_serve)

    b = subparsers.add_parser("bench", help="open-loop load test of an OpenAI-compatible server")
    b.add_argument("--url", default="http://127.0.0.1:8000")
    b.add_argument("--model", default=None, help="model name (default: the server's first)")
    b.add_argument("--rate", type=float, default=math.inf, help="requests/s (default: all at once)")
    b.add_argument("--arrival", choices=["poisson", "gamma"], default="poisson")
    b.add_argument("--burstiness", type=float, default=1.0, help="gamma shape (1 = Poisson)")
    b.add_argument("--num-requests", type=int, default=100)
    b.add_argument("--input-mean", type=float, default=200.0)
    b.add_argument("--output-mean", type=float, default=180.0)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--slo-ttft-ms", type=float, default=None)
    b.add_argument("--slo-tpot-ms", type=float, default=None)
    b.add_argument("--out", default=DEFAULT_RESULT, help="result JSON (a PNG is written beside)")
    b.set_defaults(func=run_bench)


# ---- serve ----------------------------------------------------------------------------------


def run_serve(args: argparse.Namespace) -> int:
    # Heavy imports here so `fleetlm --help` and the other subcommands stay fast.
    from orchestrator.api.launch import ServeOptions, start_stack

    options = ServeOptions(
        config_path=args.config,
        address=args.address,
        host=args.host,
        port=args.port,
        ingress_replicas=args.ingress_replicas,
        admin_port=args.admin_port,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack = start_stack(options)
    try:
        for line in stack.banner():
            print(line, flush=True)
        misses = 0
        while not stop.wait(RAY_CHECK_S):
            misses = 0 if stack.ray_reachable() else misses + 1
            if misses >= RAY_MISSES:
                print(
                    f"fleetlm: error: Ray at {stack.ray_address} is gone (its GCS stopped "
                    "answering); the deployment went with it. Exiting.",
                    file=sys.stderr,
                    flush=True,
                )
                # Ray's own shutdown hooks wait for the dead GCS (30 s and more): leave now.
                os._exit(1)
        print("fleetlm: shutting down", flush=True)
    finally:
        stack.shutdown()
    return 0


# ---- bench ----------------------------------------------------------------------------------


def run_bench(args: argparse.Namespace) -> int:
    from orchestrator.cli.loadgen import (
        ProgressPrinter,
        WorkloadSpec,
        format_summary,
        run_benchmark,
        write_results,
    )

    spec = WorkloadSpec(
        num_requests=args.num_requests,
        rate=args.rate,
        arrival=args.arrival,
        burstiness=args.burstiness,
        input_mean=args.input_mean,
        output_mean=args.output_mean,
        seed=args.seed,
    )
    import httpx

    try:
        summary, results = asyncio.run(
            run_benchmark(
                args.url,
                spec,
                args.slo_ttft_ms,
                args.slo_tpot_ms,
                args.model,
                progress=ProgressPrinter(sys.stderr),  # stdout keeps only the summary
            )
        )
    except httpx.HTTPError as exc:  # the server is not there (or not an OpenAI API)
        print(f"fleetlm: error: {args.url}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    png = write_results(summary, results, Path(args.out))
    print(f"wrote {args.out} and {png}")
    return 0 if summary["completed"] else 1


if __name__ == "__main__":
    from orchestrator.cli.main import main

    sys.exit(main(["serve", *sys.argv[1:]]))
