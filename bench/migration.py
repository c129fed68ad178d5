"""Live-migration benchmark on one GPU: two replica actors share it (Llama-3-8B shape, dummy bf16
weights), a long request moves between them while others decode (run on a GPU host; not a test).

  python bench/migration.py [--lengths 1024,4096,8192,16384,32768] [--out migration.json]
  python bench/migration.py --smoke      # the embedded tiny model on CPU, host only (checks
                                         # the script itself; its figures mean nothing)

Per context length L, a request with an L-token prompt decodes on replica A; after 16 tokens it
moves to replica B and the client (a ReplicaClient, as the ingress) follows it. Modes:

  cuda_ipc        multi-stage copy, B maps A's KV cache through CUDA IPC (the default on a GPU)
  cuda_ipc-1shot  max_stages 0: pause at once, copy everything, commit (a blocking copy)
  host            multi-stage copy through host memory over gRPC
  host-1shot      host, max_stages 0
  recompute       no KV moves: the request is aborted on A and re-submitted to B with the tokens
                  generated so far (B prefills L + generated tokens)

Downtime = the request's longest inter-token gap around the move minus its median gap before it
(what its client sees). Also: the replica's own pause-to-commit time, stages, bytes, the
effective copy bandwidth against the device copy bandwidth (cuda_ipc) and pinned host bandwidth
(host), and the co-running requests' step time during migrations vs just before (their slowdown).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.engine import SHAPES, copy_bandwidth, make_model_dir

BLOCKS_PER_REPLICA = 18_000  # 2 MiB each for this shape: ~36 GB of KV per replica
STEADY_TOKENS = 16  # tokens decoded before the move (the median gap comes from them)
AFTER_TOKENS = 16  # tokens after the move before the request is dropped
BACKGROUND = 4  # co-running requests per replica (512-token prompts), decoding throughout


def pinned_bandwidth() -> float:
    """Bytes/s of a 1 GiB device -> pinned host copy."""
    dev = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    host = torch.empty(1 << 30, dtype=torch.uint8, pin_memory=True)
    host.copy_(dev)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(3):
        host.copy_(dev)
    torch.cuda.synchronize()
    rate = 3 * (1 << 30) / (time.perf_counter() - t0)
    del dev, host
    torch.cuda.empty_cache()
    return rate


def start_replicas(model_dir: Path, max_len: int, smoke: bool) -> list[tuple[Any, str]]:
    import ray

    from actors.common.config import (
        CacheConfig,
        EngineConfig,
        MigrationSettings,
        ModelConfig,
        ReplicaOptions,
        ReplicaSpec,
        SchedulerConfig,
    )
    from actors.replica.actor import ReplicaActor

    engine = EngineConfig(
        model=ModelConfig(
            model=str(model_dir),
            dtype="float32" if smoke else "bfloat16",
            max_model_len=max_len,
            load_format="auto" if smoke else "dummy",
        ),
        cache=CacheConfig(num_gpu_blocks_override=512 if smoke else BLOCKS_PER_REPLICA),
        scheduler=SchedulerConfig(max_num_batched_tokens=8192, max_num_seqs=64),
        device="cpu" if smoke else "cuda",
    )
    options = ReplicaOptions(migration=MigrationSettings(downtime_budget_ms=10.0, max_stages=4))
    actors = [
        ray.remote(ReplicaActor)
        .options(num_gpus=0 if smoke else 0.5, num_cpus=1)
        .remote(f"bench-{i}", ReplicaSpec(engine), None, options)
        for i in range(2)
    ]
    addresses = ray.get([a.address.remote() for a in actors], timeout=600)
    return list(zip(actors, addresses, strict=True))


class Background:
    """Co-running requests on both replicas; their token times give the step time."""

    def __init__(self, addresses: list[str], vocab: int, prompt_len: int, max_tokens: int) -> None:
        self.addresses = addresses
        self.vocab = vocab
        self.prompt_len = prompt_len
        self.max_tokens = max_tokens
        self.times: list[float] = []
        self.tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        from actors.common.replica_client import ReplicaClient
        from actors.common.sampling_params import SamplingParams
        from actors.common.types import GenerateSpec

        params = SamplingParams(temperature=0.0, max_tokens=self.max_tokens, ignore_eos=True)
        rng = random.Random(1)
        self.clients = [ReplicaClient(a) for a in self.addresses]

        async def run(client: Any, i: int) -> None:
            prompt = tuple(rng.randrange(4, self.vocab) for _ in range(self.prompt_len))
            async for d in client.generate(GenerateSpec(f"bg-{i}", prompt, params)):
                if d.error is not None:
                    raise RuntimeError(f"co-running request bg-{i}: {d.error}")
                if d.token_ids:
                    self.times.append(time.perf_counter())

        for i in range(BACKGROUND * len(self.clients)):
            self.tasks.append(asyncio.create_task(run(self.clients[i % 2], i)))

    def step_ms(self, t0: float, t1: float) -> float | None:
        """Mean time per token of one co-running request within [t0, t1]."""
        n = sum(1 for t in self.times if t0 <= t <= t1)
        per_request = n / (BACKGROUND * len(self.addresses))
        return (t1 - t0) * 1e3 / per_request if per_request >= 2 else None

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for c in self.clients:
            await c.close()


async def measure(
    replicas: list[tuple[Any, str]], length: int, mode: str, bg: Background, seq: int, vocab: int
) -> dict[str, Any]:
    from actors.common.commands import MigrateOut
    from actors.common.control_client import ReplicaControlClient
    from actors.common.replica_client import ReplicaClient
    from actors.common.sampling_params import SamplingParams
    from actors.common.types import GenerateSpec

    (_, a), (_, b) = replicas
    rng = random.Random(length + seq)
    prompt = tuple(rng.randrange(4, vocab) for _ in range(length))
    # Long enough to outlast the slowest migration (the stream is closed after AFTER_TOKENS).
    params = SamplingParams(temperature=0.0, max_tokens=1500, ignore_eos=True)
    rid = f"mig-{mode}-{length}-{seq}"
    ca, cb, control = ReplicaClient(a), ReplicaClient(b), ReplicaControlClient(a)
    times: list[float] = []
    tokens: list[int] = []
    report = None
    moved_at = done_at = 0.0
    try:
        stream = ca.generate(GenerateSpec(rid, prompt, params))
        async for d in stream:
            if d.token_ids:
                times.append(time.perf_counter())
                tokens.extend(d.token_ids)
            if len(tokens) >= STEADY_TOKENS:
                break
        moved_at = time.perf_counter()
        if mode == "recompute":
            await stream.aclose()  # aborts it on A
            resumed = GenerateSpec(rid, prompt, params, resume_token_ids=tuple(tokens))
            follow = cb.generate(resumed)
        else:
            transport, _, oneshot = mode.partition("-")
            command = MigrateOut(rid, b, transport, 0 if oneshot else None)
            moving = asyncio.create_task(control.execute(command, f"m-{rid}", 300))
            async for d in stream:
                if d.token_ids:
                    times.append(time.perf_counter())
                    tokens.extend(d.token_ids)
                if d.migrated_to is not None:
                    break
            result = await moving
            if result.error is not None:
                raise RuntimeError(f"{mode} at {length}: {result.error}")
            report = result.body
            done_at = time.perf_counter()
            follow = cb.attach(rid)
        async for d in follow:
            if d.token_ids:
                times.append(time.perf_counter())
                tokens.extend(d.token_ids)
            if len(tokens) >= STEADY_TOKENS + AFTER_TOKENS:
                break
        await follow.aclose()
    finally:
        for c in (ca, cb, control):
            await c.close()
    gaps = [(t1 - t0) * 1e3 for t0, t1 in zip(times, times[1:], strict=False)]
    before = gaps[: STEADY_TOKENS - 1]
    normal = statistics.median(before[2:] or before)
    out: dict[str, Any] = {
        "mode": mode,
        "context": length,
        "normal_gap_ms": round(normal, 3),
        "longest_gap_ms": round(max(gaps[STEADY_TOKENS - 2 :]), 3),
        "downtime_ms": round(max(gaps[STEADY_TOKENS - 2 :]) - normal, 3),
    }
    if report is not None:
        out.update(
            outcome=report.outcome,
            reason=report.reason,
            stages=report.stages,
            bytes=report.bytes,
            replica_pause_ms=round(report.downtime_ms, 3),
            duration_ms=round(report.duration_ms, 3),
            effective_gbps=round(report.bytes / max(report.duration_ms, 1e-3) / 1e6, 2),
        )
        window = bg.step_ms(moved_at, done_at)
        calm = bg.step_ms(times[2], moved_at)  # the same load, the long request decoding
        if window and calm:
            out["corunning_step_ms"] = round(window, 3)
            out["corunning_step_ms_before"] = round(calm, 3)
    return out


async def run_all(
    replicas: list[tuple[Any, str]],
    lengths: list[int],
    smoke: bool,
    modes: list[str],
    trials: int,
    max_len: int,
) -> list[dict[str, Any]]:
    vocab = 260 if smoke else 100_000
    prompt_len = 16 if smoke else 512
    bg = Background([addr for _, addr in replicas], vocab, prompt_len, max_len - prompt_len - 1)
    await bg.start()
    await asyncio.sleep(3.0)  # the co-running requests are decoding
    results = []
    some = [n for n in lengths if n in (1024, 8192)] or lengths[:1]
    modes_at = {
        "cuda_ipc": [] if smoke else lengths,
        "cuda_ipc-1shot": [] if smoke else lengths,
        "host": lengths,
        "host-1shot": some,
        "recompute": some,
    }
    seq = 0
    for length in lengths:
        for mode, at in modes_at.items():
            if length not in at or mode not in modes:
                continue
            for _ in range(1 if mode == "recompute" else trials):
                seq += 1
                result = await measure(replicas, length, mode, bg, seq, vocab)
                print(json.dumps(result), flush=True)
                results.append(result)
    await bg.stop()
    return results


def summarize(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per mode and context: downtime p50 / p99 (nearest rank) and the committed count."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(f"{r['mode']}@{r['context']}", []).append(r)
    out = {}
    for key, rs in groups.items():
        down = sorted(r["downtime_ms"] for r in rs)
        out[key] = {
            "n": len(rs),
            "committed": sum(r.get("outcome", "committed") == "committed" for r in rs),
            "downtime_p50_ms": down[(len(down) - 1) // 2],
            "downtime_p99_ms": down[min(len(down) - 1, int(0.99 * len(down)))],
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-shape", default="llama3-8b", choices=["llama3-8b"])
    ap.add_argument("--lengths", default="1024,4096,8192,16384,32768")
    ap.add_argument("--modes", default="cuda_ipc,cuda_ipc-1shot,host,host-1shot,recompute")
    ap.add_argument("--trials", type=int, default=5, help="migrations per mode and length")
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU, host transport")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "migration.json"))
    args = ap.parse_args()
    lengths = [64, 256] if args.smoke else [int(x) for x in args.lengths.split(",")]
    import ray

    if args.smoke:
        device_bw = host_bw = 0.0
        model_dir = make_model_dir("tiny")
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    else:
        device_bw = copy_bandwidth(torch.device("cuda"))
        host_bw = pinned_bandwidth()
        torch.cuda.empty_cache()
        SHAPES[args.model_shape]["max_position_embeddings"] = 131072
        model_dir = make_model_dir(args.model_shape)
        ray.init(num_gpus=1, include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    max_len = 2048 if args.smoke else max(lengths) + 2048
    replicas = start_replicas(model_dir, max_len, args.smoke)
    started_s = time.perf_counter() - t0
    results = asyncio.run(
        run_all(replicas, lengths, args.smoke, args.modes.split(","), args.trials, max_len)
    )
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "gpu": "none (smoke run)" if args.smoke else torch.cuda.get_device_name(0),
        "shape": args.model_shape,
        "command": " ".join(["python3", *sys.argv]),
        "device_copy_GBps": round(device_bw / 1e9, 1),
        "pinned_d2h_GBps": round(host_bw / 1e9, 1),
        "replicas_started_s": round(started_s, 1),
        "summary": summarize(results),
        "results": results,
    }
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k != "results"}, indent=1))
    ray.shutdown()


if __name__ == "__main__":
    main()
