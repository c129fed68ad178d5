"""Where one request's first-token time goes inside a replica (not a test).

  python bench/first_token.py [--model-shape tiny|llama3-8b] [--prompt-len 200] [--requests 30]

Sequential max_tokens=1 requests, p50 of each (ms):
  offline_main     LLMEngine stepped on the main thread (what bench/serving.py's offline path does)
  offline_thread   the same engine stepped on another thread (as the replica's engine loop is)
  grpc             through a ReplicaServer (engine-loop thread + grpc.aio thread) and a
                   ReplicaClient in this process, split into: send -> submit (gRPC in),
                   submit -> step start, the engine steps, step end -> put (publish),
                   put -> receive (gRPC out)
On CPU run it with OMP_NUM_THREADS=1, as a 1-CPU Ray actor runs: with two intra-op threads the
engine stepped off the main thread ran ~1.8x slower on the 2-core machine (its BLAS calls), which
says nothing about a replica.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.common.config import CacheConfig, EngineConfig, ModelConfig
from actors.common.replica_client import ReplicaClient
from actors.common.sampling_params import SamplingParams
from actors.common.types import GenerateSpec
from actors.engine.engine import LLMEngine
from actors.replica import loop as replica_loop
from actors.replica import server as replica_server

PARAMS = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)


def make_engine(args: argparse.Namespace, marks: dict[str, float] | None = None) -> LLMEngine:
    from bench.engine import make_model_dir

    gpu = args.device == "cuda"
    engine = LLMEngine(
        EngineConfig(
            model=ModelConfig(
                model=str(make_model_dir(args.model_shape)),
                dtype="bfloat16" if gpu else "float32",
                load_format="auto" if args.model_shape == "tiny" else "dummy",
                max_model_len=2048,
            ),
            cache=CacheConfig(gpu_memory_utilization=0.5),
            device=args.device,
        )
    )
    if marks is not None:
        step = engine.step

        def timed_step() -> list:
            marks.setdefault("step0", time.perf_counter())
            out = step()
            marks["step1"] = time.perf_counter()
            return out

        engine.step = timed_step  # type: ignore[method-assign]
    return engine


def offline(engine: LLMEngine, prompt: list[int], n: int, tag: str) -> float:
    times = []
    for i in range(n):
        t = time.perf_counter()
        engine.add_request(f"{tag}{i}", prompt, PARAMS)
        while engine.has_unfinished_requests():
            engine.step()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times[5:])


def in_thread(fn: Callable[[], float]) -> float:
    box: list[float] = []
    th = threading.Thread(target=lambda: box.append(fn()))
    th.start()
    th.join()
    return box[0]


def through_grpc(args: argparse.Namespace, prompt: list[int]) -> dict[str, float]:
    marks: dict[str, float] = {}
    submit, put = replica_loop.EngineLoop.submit, replica_server._ConnectionSink.put_batch

    def timed_submit(self: object, *a: object) -> None:
        marks["submit"] = time.perf_counter()
        submit(self, *a)  # type: ignore[arg-type]

    def timed_put(self: object, *a: object) -> None:
        marks["put"] = time.perf_counter()
        put(self, *a)  # type: ignore[arg-type]

    replica_loop.EngineLoop.submit = timed_submit  # type: ignore[method-assign]
    replica_server._ConnectionSink.put_batch = timed_put  # type: ignore[method-assign]
    server = replica_server.ReplicaServer(lambda: make_engine(args, marks), "bench")

    async def run() -> list[list[float]]:
        client = ReplicaClient(server.address)
        rows = []
        for i in range(args.requests):
            marks.clear()
            t = time.perf_counter()
            spec = GenerateSpec(request_id=f"g{i}", prompt_token_ids=tuple(prompt), sampling=PARAMS)
            async for _ in client.generate(spec):
                marks.setdefault("recv", time.perf_counter())
            m = marks
            rows.append(
                [
                    m["recv"] - t,
                    m["submit"] - t,
                    m["step0"] - m["submit"],
                    m["step1"] - m["step0"],
                    m["put"] - m["step1"],
                    m["recv"] - m["put"],
                ]
            )
        return rows

    try:
        rows = asyncio.run(run())
    finally:
        server.stop()
    names = [
        "grpc",
        "send_to_submit",
        "submit_to_step",
        "engine_steps",
        "step_to_put",
        "put_to_recv",
    ]
    return {
        k: statistics.median(c[5:]) * 1e3
        for k, c in zip(names, zip(*rows, strict=True), strict=True)
    }


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--model-shape", default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--prompt-len", type=int, default=200)
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "first_token.json"))
    args = ap.parse_args()
    prompt = [10 + i % 1000 for i in range(args.prompt_len)]
    engine = make_engine(args)
    result = {
        "offline_main": offline(engine, prompt, args.requests, "m"),
        "offline_thread": in_thread(lambda: offline(engine, prompt, args.requests, "t")),
    }
    engine = None  # free the device for the replica's engine
    result.update(through_grpc(args, prompt))
    out = {"args": vars(args), "p50_ms": result, "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(out, indent=2))
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
