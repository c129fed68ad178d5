"""The whole stack vs the engine offline, same workload, same run (GPU host; not a test).

  python bench/serving.py [--model-shape llama3-8b] [--replicas 1] [--scenarios inf:256,4:64]
                          [--input-mean 200 --output-mean 180] [--out serving.json]

Each scenario is `rate:num_requests` (rate in requests/s, `inf` = all at once). For every scenario
the same open-loop trace (arrival times, lognormal lengths, token-id prompts) runs twice:
  stack:   `fleetlm serve`'s path (Ray, controller, replica actors, Serve ingress) driven over
           HTTP by orchestrator.cli.loadgen, streaming with ignore_eos;
  offline: one in-process LLMEngine (same config) fed the same trace by a replay loop.
Reports throughput loss (1 - stack/offline output tok/s) and the p50 TTFT difference. The stack
runs first and is shut down before the offline engine takes the GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.cli.loadgen import (
    RequestPlan,
    RequestResult,
    WorkloadSpec,
    build_workload,
    format_summary,
    run_requests,
    summarize,
)


def parse_scenarios(text: str) -> list[tuple[float, int]]:
    out = []
    for item in text.split(","):
        rate, _, n = item.partition(":")
        out.append((math.inf if rate == "inf" else float(rate), int(n)))
    return out


def deployment_yaml(
    model_dir: Path, args: argparse.Namespace, gpus: int, overrides: dict[str, Any] | None = None
) -> str:
    """The deployment under test: one GPU per replica (or CPU replicas on a CPU machine), with
    `overrides` merged in section by section (bench/migration_load.py's shared GPU, policy)."""
    dummy = args.model_shape != "tiny"
    doc = {
        "model": {
            "path": str(model_dir),
            "served_model_name": "bench-model",
            "dtype": "bfloat16" if gpus else "float32",
            "load_format": "dummy" if dummy else "auto",
            "max_model_len": args.max_model_len,
        },
        "replicas": {
            "count": args.replicas,
            "resources": {"num_cpus": 1, "num_gpus": 1 if gpus else 0},
        },
        "engine": {
            "gpu_memory_utilization": args.gpu_memory_utilization,
            "max_num_batched_tokens": args.max_num_batched_tokens,
            "max_num_seqs": args.max_num_seqs,
        },
        "dispatch": {"policy": "least_load"},
        "server": {
            "http_port": args.port,
            "controller_grpc_port": 0,
            "max_queue_per_replica": 100000,
        },
    }
    return yaml.safe_dump(_merged(doc, overrides or {}), sort_keys=False)


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        inner = out.get(key)
        out[key] = _merged(inner, value) if isinstance(inner, dict) else value
    return out


def run_stack(
    cfg: Any, traces: list[list[RequestPlan]], ingress_replicas: int
) -> list[dict[str, Any]]:
    import httpx

    from orchestrator.api.launch import ServeOptions, start_stack

    stack = start_stack(ServeOptions(config=cfg, ingress_replicas=ingress_replicas))
    try:
        deadline = time.monotonic() + 600
        while httpx.get(f"{stack.base_url}/health", timeout=10).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("stack never became healthy")
            time.sleep(0.5)  # waiting for replicas to load
        warm = traces[0][: min(8, len(traces[0]))]
        asyncio.run(run_requests(stack.base_url, cfg.model.name, _at_once(warm)))
        out = []
        for plans in traces:
            results, duration = asyncio.run(run_requests(stack.base_url, cfg.model.name, plans))
            out.append(summarize(results, duration))
        return out
    finally:
        stack.shutdown()


def _at_once(plans: list[RequestPlan]) -> list[RequestPlan]:
    return [replace(p, at_s=0.0) for p in plans]


def run_offline(cfg: Any, traces: list[list[RequestPlan]]) -> list[dict[str, Any]]:
    from actors.engine.engine import LLMEngine
    from orchestrator.controller.deployment import replica_spec

    engine = LLMEngine(replica_spec(cfg).engine)
    replay(engine, _at_once(traces[0][: min(8, len(traces[0]))]))  # warm-up, as for the stack
    out = []
    for plans in traces:
        results, duration = replay(engine, plans)
        out.append(summarize(results, duration))
    return out


def replay(engine: Any, plans: list[RequestPlan]) -> tuple[list[RequestResult], float]:
    """Feed `plans` to the engine at their arrival times (open loop) and time every token."""
    from actors.common.sampling_params import SamplingParams

    results = [RequestResult(at_s=p.at_s, input_tokens=len(p.prompt_token_ids)) for p in plans]
    sent: dict[str, float] = {}
    order = sorted(range(len(plans)), key=lambda i: plans[i].at_s)
    nxt = 0
    start = time.perf_counter()
    while nxt < len(order) or engine.has_unfinished_requests():
        now = time.perf_counter() - start
        while nxt < len(order) and plans[order[nxt]].at_s <= now:
            i = order[nxt]
            params = SamplingParams(
                max_tokens=plans[i].max_tokens, temperature=0.0, ignore_eos=True
            )
            engine.add_request(f"r{i}", list(plans[i].prompt_token_ids), params)
            sent[f"r{i}"] = time.perf_counter()
            nxt += 1
        if not engine.has_unfinished_requests():
            time.sleep(max(0.0, min(plans[order[nxt]].at_s - now, 0.005)))  # next arrival
            continue
        for o in engine.step():
            t = time.perf_counter()
            r = results[int(o.request_id[1:])]
            if o.new_token_ids and r.output_tokens == 0:
                r.ttft_s = t - sent[o.request_id]
            r.output_tokens += len(o.new_token_ids)
            if o.finished:
                r.e2e_s = t - sent[o.request_id]
                r.ok = o.error is None
                r.error = o.error
    return results, time.perf_counter() - start


def compare(stack: dict[str, Any], offline: dict[str, Any]) -> dict[str, float]:
    return {
        "throughput_loss": 1.0 - stack["output_throughput"] / offline["output_throughput"],
        "ttft_p50_added_ms": stack["ttft_ms"]["p50"] - offline["ttft_ms"]["p50"],
        "tpot_p50_added_ms": stack["tpot_ms"]["p50"] - offline["tpot_ms"]["p50"],
    }


def add_deployment_args(ap: argparse.ArgumentParser) -> None:
    """The deployment and workload knobs bench/serving.py, scaling.py and migration_load.py
    share."""
    from bench.engine import SHAPES

    ap.add_argument("--model-shape", default="llama3-8b", choices=sorted(SHAPES))
    ap.add_argument("--input-mean", type=float, default=200.0)
    ap.add_argument("--output-mean", type=float, default=180.0)
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    ap.add_argument("--port", type=int, default=8000)


def workload(
    args: argparse.Namespace, model_dir: Path, rate: float, n: int, **spec: Any
) -> list[RequestPlan]:
    """The open-loop trace of one scenario, with prompts valid for the model's tokenizer
    (`spec`: more WorkloadSpec fields, e.g. a bursty arrival)."""
    from actors.common.tokenizer import Tokenizer

    # The dummy shapes borrow the embedded tokenizer: keep ids inside both vocabularies.
    vocab = min(
        Tokenizer.from_dir(model_dir).vocab_size,
        json.loads((model_dir / "config.json").read_text())["vocab_size"],
    )
    return build_workload(
        WorkloadSpec(
            num_requests=n,
            rate=rate,
            input_mean=args.input_mean,
            output_mean=args.output_mean,
            max_model_len=args.max_model_len,
            vocab_size=vocab,
            **spec,
        )
    )


def main() -> None:
    from bench.engine import make_model_dir
    from orchestrator.config.load import parse_config

    ap = argparse.ArgumentParser()
    add_deployment_args(ap)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--ingress-replicas", type=int, default=1)
    ap.add_argument("--scenarios", default="inf:256,4:64")
    ap.add_argument("--skip", default="", help="stack or offline")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "serving.json"))
    args = ap.parse_args()

    import torch

    gpus = torch.cuda.device_count()
    model_dir = make_model_dir(args.model_shape)
    cfg = parse_config(deployment_yaml(model_dir, args, gpus), "<bench>")
    traces = [workload(args, model_dir, rate, n) for rate, n in parse_scenarios(args.scenarios)]

    report: dict[str, Any] = {"args": vars(args), "gpus": gpus, "scenarios": []}
    stack = (
        run_stack(cfg, traces, args.ingress_replicas)
        if "stack" not in args.skip
        else [None] * len(traces)
    )
    offline = run_offline(cfg, traces) if "offline" not in args.skip else [None] * len(traces)
    for (rate, n), s, o in zip(parse_scenarios(args.scenarios), stack, offline, strict=True):
        entry: dict[str, Any] = {"rate": rate, "num_requests": n, "stack": s, "offline": o}
        if s and o:
            entry["compare"] = compare(s, o)
        report["scenarios"].append(entry)
        print(f"== rate {rate} x {n}")
        for name, summary in (("stack", s), ("offline", o)):
            if summary:
                print(f"-- {name}\n{format_summary(summary)}")
        if "compare" in entry:
            print(f"-- compare {json.dumps(entry['compare'])}")
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
