"""Where a request's first-token latency goes on the ingress path (not a test).

  python bench/ingress_latency.py [--prompt-len 200] [--requests 50] [--out ingress_latency.json]

One replica of the embedded model, then sequential max_tokens=1 requests, p50 of each path:
  grpc:        ReplicaClient straight to the replica (the floor: engine + token plane)
  asgi:        the ingress app in this process (FastAPI + OpenAIServing + Router), no HTTP/Serve
  direct:      over HTTP to the ingress replica's own listener (the default `fleetlm serve`
               path; non-stream, and the first SSE chunk of a stream)
  direct_noop: GET /v1/models over the same path: the HTTP hop's own cost per request
  serve*:      the same three through Ray Serve's HTTP proxy (in front of the same ingress
               replica, on --port + 1), the path `FLEETLM_INGRESS_HTTP=serve-proxy` serves
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from policies.config import parse_config

CONFIG = """
model: {{path: fleetlm/tiny-llama}}
replicas: {{count: 1, resources: {{num_cpus: 1, num_gpus: {gpus}}}}}
server: {{http_port: {port}, controller_grpc_port: 0}}
"""


async def p50_ms(fn: Callable[[int], Awaitable[object]], n: int) -> float:
    for i in range(5):  # warm-up: connections, caches, first-call paths
        await fn(-1 - i)
    times = []
    for i in range(n):
        t = time.perf_counter()
        await fn(i)
        times.append((time.perf_counter() - t) * 1000.0)
    return statistics.median(times)


async def measure(stack: object, prompt: list[int], n: int) -> dict[str, float]:
    from actors.engine.sampling_params import SamplingParams
    from actors.replica.client import ReplicaClient
    from actors.replica.types import GenerateSpec
    from orchestrator.api.app import Handlers, build_app
    from orchestrator.api.deployment import HealthChecker
    from orchestrator.api.launch import ingress_settings
    from orchestrator.api.metrics import IngressMetrics
    from orchestrator.api.serving import OpenAIServing, ReplicaPool, ServedModel
    from orchestrator.controller.client import ControllerClient
    from orchestrator.controller.router import Router

    out: dict[str, float] = {}
    address = stack.cluster.status()["replicas"][0]["address"]
    replica = ReplicaClient(address)
    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)

    async def grpc_once(i: int) -> None:
        spec = GenerateSpec(request_id=f"g{i}", prompt_token_ids=tuple(prompt), sampling=params)
        async for _ in replica.generate(spec):
            pass

    out["grpc"] = await p50_ms(grpc_once, n)

    s = ingress_settings(stack.config, stack.controller_address)
    from actors.models.embedded import resolve_model_path

    model = ServedModel.load(s.model_name, resolve_model_path(s.model), None, s.block_size)
    router = Router(s.controller_address)
    await router.start()
    pool = ReplicaPool()
    health = HealthChecker(ControllerClient(s.controller_address), router, pool, 2.0)
    app = build_app(Handlers(OpenAIServing(model, router, pool), IngressMetrics(), health, 1 << 20))
    body = {"model": s.model_name, "prompt": prompt, "max_tokens": 1, "temperature": 0}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://in-process") as c:
        out["asgi"] = await p50_ms(lambda i: c.post("/v1/completions", json=body), n)

    for name, url in (("direct", stack.base_url), ("serve", stack.serve_proxy_url)):
        out.update(await over_http(name, url, body, n))
    await router.close()
    await pool.close()
    await replica.close()
    return out


async def over_http(name: str, url: str, body: dict[str, object], n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        out[f"{name}_noop"] = await p50_ms(lambda i: c.get("/v1/models"), n)
        out[name] = await p50_ms(lambda i: c.post("/v1/completions", json=body), n)

        async def first_chunk(i: int) -> None:
            async with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        return

        out[f"{name}_stream_first_chunk"] = await p50_ms(first_chunk, n)
    return out


def main() -> None:
    from orchestrator.api.launch import ServeOptions, _local_gpu_count, start_stack

    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt-len", type=int, default=200)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "ingress.json"))
    args = ap.parse_args()
    gpus = 1 if _local_gpu_count() else 0
    cfg = parse_config(CONFIG.format(gpus=gpus, port=args.port), "<bench>")
    stack = start_stack(
        ServeOptions(config=cfg, http_path="direct", serve_proxy_port=args.port + 1)
    )
    try:
        while httpx.get(f"{stack.base_url}/health", timeout=10).status_code != 200:
            time.sleep(0.5)  # waiting for the replica to load
        prompt = [16 + i % 200 for i in range(args.prompt_len)]
        result = asyncio.run(measure(stack, prompt, args.requests))
    finally:
        stack.shutdown()
    result = {"gpus": gpus, "prompt_len": args.prompt_len, "p50_ms": result}
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
