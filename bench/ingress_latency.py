"""Where a request's first-token latency goes on the ingress path (not a test).

  python bench/ingress_latency.py [--prompt-len 200] [--requests 100] [--burst 64]
                                  [--out ingress.json]

One replica of the embedded model, then sequential max_tokens=1 requests, p50 of each path
(the paths take turns request by request, so load drift on a shared machine hits all alike):
  grpc:        ReplicaClient straight to the replica (the floor: engine + token plane)
  asgi:        the ingress app in this process (FastAPI + OpenAIServing + Router), no HTTP/Serve
  direct:      over HTTP to the ingress replica's own listener (the default `fleetlm serve`
               path; non-stream, and the first SSE chunk of a stream)
  direct_noop: GET /v1/models over the same path: the HTTP hop's own cost per request
  serve*:      the same three through Ray Serve's HTTP proxy (in front of the same ingress
               replica, on --port + 1), the path `FLEETLM_INGRESS_HTTP=serve-proxy` serves
Then --burst requests at once (streamed, max_tokens=1) through direct and serve in turn, three
rounds each: p50 and max time to the first chunk, i.e. how fast each path admits a burst.
Then --streams streams of 64 tokens at once per path (two rounds each): CPU seconds the ingress
replica and Serve's proxy processes spend per SSE chunk relayed (from /proc, so Linux only).
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

from orchestrator.config.load import parse_config

CONFIG = """
model: {{path: fleetlm/tiny-llama}}
replicas: {{count: 1, resources: {{num_cpus: 1, num_gpus: {gpus}}}}}
server: {{http_port: {port}, controller_grpc_port: 0}}
"""


Probe = Callable[[int], Awaitable[object]]
# A probe that times itself returns its latency in ms (a stream's first chunk, not its end).
Timed = float


async def p50s_ms(probes: dict[str, Probe], n: int) -> dict[str, float]:
    """p50 per path, the paths interleaved request by request so load drift hits them alike."""
    for fn in probes.values():
        for i in range(5):  # warm-up: connections, caches, first-call paths
            await fn(-1 - i)
    times: dict[str, list[float]] = {name: [] for name in probes}
    for i in range(n):
        for name, fn in probes.items():
            t = time.perf_counter()
            result = await fn(i)
            ms = result if isinstance(result, Timed) else (time.perf_counter() - t) * 1000.0
            times[name].append(ms)
    return {name: statistics.median(ts) for name, ts in times.items()}


async def measure(stack: object, prompt: list[int], n: int) -> dict[str, float]:
    from actors.common.replica_client import ReplicaClient
    from actors.common.sampling_params import SamplingParams
    from actors.common.types import GenerateSpec
    from orchestrator.api.app import Handlers, build_app
    from orchestrator.api.deployment import HealthChecker, describe_model
    from orchestrator.api.launch import ingress_settings
    from orchestrator.api.serving import OpenAIServing, ReplicaPool
    from orchestrator.controller.router import Router
    from orchestrator.metrics.ingress import IngressMetrics

    with stack.cluster.admin() as admin:
        address = admin.replicas()["replicas"][0]["address"]
    replica = ReplicaClient(address, stack.cluster.security)
    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)

    async def grpc_once(i: int) -> None:
        spec = GenerateSpec(request_id=f"g{i}", prompt_token_ids=tuple(prompt), sampling=params)
        async for _ in replica.generate(spec):
            pass

    s = ingress_settings(stack.config, stack.controller_address, stack.cluster.security)
    router = Router(s.controller_address, security=s.security)
    await router.start()
    pool = ReplicaPool(s.security)
    model = await describe_model(s.model_name, router, pool, wait_s=60)
    health = HealthChecker(router, pool, 2.0)
    app = build_app(Handlers(OpenAIServing(model, router, pool), IngressMetrics(), health, 1 << 20))
    body = {"model": s.model_name, "prompt": prompt, "max_tokens": 1, "temperature": 0}
    in_process = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://in")
    direct = httpx.AsyncClient(base_url=stack.base_url, timeout=30)
    serve = httpx.AsyncClient(base_url=stack.serve_proxy_url, timeout=30)
    probes: dict[str, Probe] = {
        "grpc": grpc_once,
        "asgi": lambda i: in_process.post("/v1/completions", json=body),
    }
    for name, c in (("direct", direct), ("serve", serve)):
        probes |= http_probes(name, c, body)
    try:
        return await p50s_ms(probes, n)
    finally:
        for c in (in_process, direct, serve):
            await c.aclose()
        await router.close()
        await pool.close()
        await replica.close()


def http_probes(name: str, c: httpx.AsyncClient, body: dict[str, object]) -> dict[str, Probe]:
    async def first_chunk(i: int) -> Timed:
        t, first = time.perf_counter(), None
        async with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
            async for line in r.aiter_lines():  # read to the end: the next probe starts idle
                if first is None and line.startswith("data: {"):
                    first = (time.perf_counter() - t) * 1000.0
        assert first is not None, "the stream sent no chunk"
        return first

    return {
        f"{name}_noop": lambda i: c.get("/v1/models"),
        name: lambda i: c.post("/v1/completions", json=body),
        f"{name}_stream_first_chunk": first_chunk,
    }


async def bursts(stack: object, prompt: list[int], size: int) -> dict[str, dict[str, float]]:
    body = {"model": stack.config.model.name, "prompt": prompt, "max_tokens": 1, "stream": True}
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    firsts: dict[str, list[float]] = {"direct": [], "serve": []}
    lasts: dict[str, list[float]] = {"direct": [], "serve": []}
    for _ in range(3):
        for name, url in (("direct", stack.base_url), ("serve", stack.serve_proxy_url)):
            async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
                probe = http_probes(name, c, body)[f"{name}_stream_first_chunk"]
                times = await asyncio.gather(*(probe(i) for i in range(size)))
            firsts[name].extend(times)
            lasts[name].append(max(times))
    return {
        name: {"p50_ms": statistics.median(firsts[name]), "max_ms": statistics.median(lasts[name])}
        for name in firsts
    }


def _cpu_s(pattern: str) -> float:
    """CPU seconds so far of the local processes whose command line contains `pattern`."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if pattern not in (proc / "cmdline").read_bytes().decode(errors="replace"):
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


async def stream_cpu(stack: object, streams: int, tokens: int = 64) -> dict[str, dict]:
    body = {"model": stack.config.model.name, "prompt": "hello there", "max_tokens": tokens}
    body |= {"ignore_eos": True, "stream": True}
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)

    async def one(c: httpx.AsyncClient) -> int:
        async with c.stream("POST", "/v1/completions", json=body) as r:
            return sum([line.startswith("data: {") async for line in r.aiter_lines()])

    out: dict[str, dict] = {}
    for name, url in (("direct", stack.base_url), ("serve", stack.serve_proxy_url)) * 2:
        ingress, proxy = _cpu_s("ServeReplica:fleetlm:"), _cpu_s("ProxyActor")
        t = time.perf_counter()
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as c:
            chunks = sum(await asyncio.gather(*(one(c) for _ in range(streams))))
        wall = time.perf_counter() - t
        ingress, proxy = _cpu_s("ServeReplica:fleetlm:") - ingress, _cpu_s("ProxyActor") - proxy
        out[name] = {  # the second round (warm) wins
            "chunks": chunks,
            "wall_s": round(wall, 3),
            "ingress_cpu_us_per_chunk": round(ingress / chunks * 1e6),
            "proxy_cpu_us_per_chunk": round(proxy / chunks * 1e6),
        }
    return out


def main() -> None:
    from orchestrator.api.launch import ServeOptions, _local_gpu_count, start_stack

    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt-len", type=int, default=200)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--burst", type=int, default=64, help="0: skip the burst")
    ap.add_argument("--streams", type=int, default=32, help="0: skip the relay CPU figures")
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
        p50 = asyncio.run(measure(stack, prompt, args.requests))
        burst = asyncio.run(bursts(stack, prompt, args.burst)) if args.burst else {}
        relay = asyncio.run(stream_cpu(stack, args.streams)) if args.streams else {}
    finally:
        stack.shutdown()
    result = {"gpus": gpus, "prompt_len": args.prompt_len, "p50_ms": p50}
    if burst:
        result[f"burst_{args.burst}_first_chunk"] = burst
    if relay:
        result[f"relay_{args.streams}_streams"] = relay
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
