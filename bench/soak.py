"""Soak: steady load on a fleet while a replica is killed every --kill-every seconds (not a
test; run by hand, results in docs/reliability.md).

  python bench/soak.py [--minutes 10] [--kill-every 60] [--rate 4] [--replicas 2]
                       [--max-tokens 64] [--gpu]

The embedded tiny model on CPU replicas, or (--gpu) on replicas sharing one GPU; the whole
stack (controller, Serve ingress, gRPC). Poisson arrivals of streamed completions. Each kill
is `ray.kill` of a ready replica's actor, as a crash would end it. Reported: requests sent,
completed, failed (by status); p50/p99 end-to-end latency inside kill windows (the 15 s after
a kill) and outside; the time from each kill until the fleet is back to --replicas ready
replicas; and the resident memory of every process of the deployment every 20 s: growth from
the start of the steady part, and from one minute in (after allocator arenas and caches have
filled), to its end. The load generator runs in a process of its own, so the driver measured
is the stack's launcher alone, as `fleetlm serve` is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.api.launch import ServeOptions, start_stack
from orchestrator.config.load import parse_config
from orchestrator.controller.backend import RayBackend

KILL_WINDOW_S = 15.0
SETTLE_S = 60.0  # memory growth is also reported from here on
MODEL = "fleetlm/tiny-llama"


def config_text(replicas: int, gpu: bool) -> str:
    # --gpu: the replicas share one GPU (a fraction each), as two replicas on one H200 would.
    share = 1.0 / replicas
    resources = f"{{num_cpus: 1.0, num_gpus: {share:g}}}" if gpu else "{num_cpus: 1.0}"
    memory = f"gpu_memory_utilization: {0.8 * share:.2f}" if gpu else "cpu_kv_cache_bytes: 32MiB"
    return f"""
replicas:
  count: {replicas}
  resources: {resources}
engine:
  {memory}
  max_num_seqs: 16
server:
  http_port: 0
  admin_port: 0
  report_interval_s: 0.25
  unhealthy_after_s: 1.5
"""


async def one_request(
    client: httpx.AsyncClient, url: str, rng: random.Random, max_tokens: int
) -> dict[str, Any]:
    body = {
        "model": MODEL,
        "prompt": [rng.randrange(4, 250) for _ in range(rng.randrange(8, 64))],
        "max_tokens": rng.randrange(max_tokens // 4, max_tokens),
        "ignore_eos": True,
        "stream": True,
        "return_token_ids": True,  # each chunk says which tokens it carries: exact counts
    }
    t0 = time.time()
    tokens, status, error = 0, 0, ""
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as resp:
            status = resp.status_code
            async for line in resp.aiter_lines():
                if line.startswith("data: {"):
                    msg = json.loads(line[6:])
                    if "error" in msg:
                        error = msg["error"].get("message", "error")
                    for choice in msg.get("choices", []):
                        tokens += len(choice.get("token_ids") or [])
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    ok = status == 200 and not error and tokens == body["max_tokens"]
    return {"start": t0, "end": time.time(), "status": status, "ok": ok, "tokens": tokens,
            "wanted": body["max_tokens"], "error": error}  # fmt: skip


async def load(
    url: str, rate: float, seconds: float, seed: int, max_tokens: int
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    tasks = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0)) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            tasks.append(asyncio.create_task(one_request(client, url, rng, max_tokens)))
            await asyncio.sleep(rng.expovariate(rate))  # Poisson arrivals
        return list(await asyncio.gather(*tasks))


def run_load(url: str, rate: float, seconds: float, seed: int, max_tokens: int) -> list[dict]:
    """`load` in the load generator's own process: the driver measured is then the stack's
    launcher alone (as `fleetlm serve` is), not a client holding every result."""
    return asyncio.run(load(url, rate, seconds, seed, max_tokens))


def ready_replicas(stack: Any) -> list[dict[str, Any]]:
    with stack.cluster.admin() as admin:
        return [r for r in admin.replicas()["replicas"] if r["state"] == "ready"]


def killer(stack: Any, every_s: float, seconds: float, want: int, out: list[dict]) -> None:
    """Thread: kill a ready replica every `every_s`, and time the fleet's recovery."""
    backend = RayBackend()
    start = time.monotonic()
    while time.monotonic() - start + every_s < seconds:
        time.sleep(every_s)  # paces the kills
        ready = ready_replicas(stack)
        if not ready:
            continue
        victim = random.choice(ready)["id"]
        killed_at = time.time()
        backend.kill_replica(victim)
        while True:
            time.sleep(0.25)  # polling the admin API until a replacement is ready
            now = ready_replicas(stack)
            if len(now) >= want and victim not in {r["id"] for r in now}:
                break
            if time.time() - killed_at > 120:
                break
        out.append({"replica": victim, "at": killed_at, "recovered_s": time.time() - killed_at})


def deployment_rss() -> dict[int, tuple[str, int]]:
    """Name and RSS of this driver (the stack's launcher), every Ray worker process
    (controller, replicas, ingress) and Ray's own raylet and GCS server."""
    out = {}
    for p in psutil.process_iter(["pid", "cmdline", "memory_info"]):
        argv = p.info["cmdline"] or []
        cmd = " ".join(argv)
        system = bool(argv) and Path(argv[0]).name in ("raylet", "gcs_server")
        if p.info["pid"] == os.getpid() or "ray::" in cmd or "default_worker" in cmd or system:
            name = "driver" if p.info["pid"] == os.getpid() else Path(argv[0]).name
            out[p.info["pid"]] = (name, p.info["memory_info"].rss)
    return out


def sample_rss(every_s: float, stop: Any, out: list[tuple[float, dict]]) -> None:
    """Thread: the deployment's RSS every `every_s` until `stop` is set."""
    start = time.monotonic()
    while True:
        out.append((time.monotonic() - start, deployment_rss()))
        if stop.wait(every_s):
            out.append((time.monotonic() - start, deployment_rss()))
            return


def rss_growth(samples: list[tuple[float, dict]], settle_s: float) -> list[dict[str, Any]]:
    """Per process alive from the first sample to the last in one role: RSS at the start, after
    `settle_s` (allocator arenas and caches fill in the first minute), and at the end. Ray
    pre-starts idle workers (`ray::IDLE`); one that became a replacement replica changed role,
    and is left out (its growth is a model loading, not a leak)."""
    first, last = samples[0][1], samples[-1][1]
    settled = next((s for t, s in samples if t >= settle_s), last)
    rows = []
    for pid in sorted(set(first) & set(last)):
        name, start = first[pid]
        if last[pid][0] != name:
            continue
        mid = settled.get(pid, (name, start))[1]
        end = last[pid][1]
        rows.append({"pid": pid, "name": name, "start_mb": start / 2**20, "settled_mb": mid / 2**20,
                     "end_mb": end / 2**20, "growth": end / start - 1,
                     "growth_after_settle": end / mid - 1})  # fmt: skip
    return rows


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    import threading

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--kill-every", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=4.0)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64, help="outputs of max/4 to max tokens")
    ap.add_argument("--gpu", action="store_true", help="replicas share this machine's GPU")
    ap.add_argument("--out", default="bench/results/soak.json")
    args = ap.parse_args()
    cfg = parse_config(config_text(args.replicas, args.gpu))
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no Ray state inherited
    with ProcessPoolExecutor(1, mp_context=spawn) as generator:
        stack = start_stack(ServeOptions(config=cfg, write_admin_files=False))
        try:
            url = stack.base_url
            generator.submit(run_load, url, args.rate, 10, 1, args.max_tokens).result()  # warm-up
            samples: list[tuple[float, dict]] = []
            stop = threading.Event()
            sampler = threading.Thread(target=sample_rss, args=(20.0, stop, samples))
            sampler.start()
            kills: list[dict] = []
            seconds = args.minutes * 60
            thread = threading.Thread(
                target=killer, args=(stack, args.kill_every, seconds, args.replicas, kills)
            )
            thread.start()
            steady = generator.submit(run_load, url, args.rate, seconds, 2, args.max_tokens)
            results = steady.result()
            thread.join()
            stop.set()
            sampler.join()
        finally:
            stack.shutdown()
    in_window = [
        r for r in results if any(k["at"] <= r["end"] and r["start"] <= k["at"] + KILL_WINDOW_S
                                  for k in kills)
    ]  # fmt: skip
    outside = [r for r in results if r not in in_window]
    lat = {
        name: [r["end"] - r["start"] for r in group if r["ok"]]
        for name, group in (("kill_windows", in_window), ("outside", outside))
    }
    memory = rss_growth(samples, SETTLE_S)
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["python3", *sys.argv]),
        "sent": len(results),
        "completed": sum(r["ok"] for r in results),
        "failed": sum(not r["ok"] for r in results),
        "failures": [r for r in results if not r["ok"]][:20],
        "kills": kills,
        "in_flight_at_kills": [
            sum(r["start"] <= k["at"] <= r["end"] for r in results) for k in kills
        ],
        "latency_s": {
            name: {"n": len(v), "p50": pct(v, 50), "p99": pct(v, 99)} for name, v in lat.items()
        },
        "rss_growth_max": max((m["growth"] for m in memory), default=None),
        "rss_growth_after_settle_max": max(
            (m["growth_after_settle"] for m in memory), default=None
        ),
        "memory": memory,
        "memory_series": [
            {"t": round(t, 1), "rss_mb": {str(p): round(r / 2**20, 1) for p, (_, r) in m.items()}}
            for t, m in samples
        ],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    shown = {k: v for k, v in summary.items() if k not in ("failures", "memory_series")}
    print(json.dumps(shown, indent=1))


if __name__ == "__main__":
    main()
