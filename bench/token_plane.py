"""Per-step CPU cost of a replica's token plane at N running requests, on CPU (not a test).

  python bench/token_plane.py [--running 1,32,256] [--connections 1] [--prompt-len 16]
                              [--warmup 5] [--steps 40] [--threads 1] [--out result.json]

Runs the real thing in this process: a ReplicaServer (EngineLoop thread + grpc.aio server thread)
around an LLMEngine with the embedded tiny model on CPU. A child process (this script with
--client) drives it like the ingress does: `--connections` ReplicaClients (one Generate stream
each) carrying N greedy ignore_eos requests, and checks that every token arrived.

The engine's step() is shadowed on the instance by a wrapper that, at the end of every step,
records perf_counter, the engine thread's CPU clock (thread_time), the process CPU clock
(process_time) and the step's own wall and CPU time. Over the steady steps (every one of the N
requests got a token), per step, microseconds:

  step            engine.step() wall time through the stack (offline: the same engine config,
                  same requests, stepped in a plain loop, no server)
  outside wall    engine thread wall time between two steps: drain the inbox, group the
                  outputs per connection, build and hand over the messages, and any wait
  outside cpu     engine thread CPU between two steps
  plane cpu       process CPU minus engine.step()'s CPU: the engine thread outside step() plus
                  the grpc.aio thread and gRPC's own threads (serialising, writing)
  client cpu      the driving process's CPU per step (what the ingress pays to decode)

and, from /proc/<pid>/task/*/schedstat over the same steps: CPU per thread, and the engine
thread's wall time split into on-CPU, waiting for a core, and blocked (the GIL, locks).

torch runs with --threads intra-op threads (default 1) so step()'s CPU stays on the engine
thread and "process CPU minus step CPU" is the token plane's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.common.config import CacheConfig, EngineConfig, SchedulerConfig
from actors.common.sampling_params import SamplingParams
from actors.engine.engine import LLMEngine
from actors.engine.outputs import RequestOutput

MARGIN_STEPS = 24  # admission over the stream spreads over a few steps; finish after the window


@dataclass(frozen=True)
class Mark:
    """Clocks read by the engine thread at the end of one step."""

    wall: float
    thread_cpu: float
    process_cpu: float
    step_wall: float
    step_cpu: float
    outputs: int


@dataclass
class StepMeter:
    """Shadows engine.step with a wrapper that appends one Mark per step, and counts the streak
    of steady steps (every one of `running` requests got an output) to wake a waiter once."""

    marks: list[Mark] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    running: int = -1
    streak: int = 0
    want: int = 0  # wake the waiter when the streak reaches this (0: nobody waits)

    def install(self, engine: LLMEngine) -> None:
        step = engine.step

        def timed() -> list[RequestOutput]:
            w0, c0 = time.perf_counter(), time.thread_time()
            outs = step()
            c1, w1 = time.thread_time(), time.perf_counter()
            mark = Mark(w1, c1, time.process_time(), w1 - w0, c1 - c0, len(outs))
            with self.cond:
                self.marks.append(mark)
                self.streak = self.streak + 1 if mark.outputs == self.running else 0
                if self.want and self.streak >= self.want:
                    self.want = 0
                    self.cond.notify_all()
            return outs

        engine.step = timed  # type: ignore[method-assign]

    def expect(self, running: int) -> None:
        with self.cond:
            self.marks, self.running, self.streak, self.want = [], running, 0, 0

    def wait_streak(self, steps: int, alive: Callable[[], bool], timeout_s: float) -> list[Mark]:
        """The last `steps` marks, once that many consecutive steps were steady."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while self.streak < steps:
                if not alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"no {steps} steady steps at {self.running} running")
                self.want = steps
                self.cond.wait(1.0)  # woken once; the timeout only notices a dead client
            return self.marks[-steps:]


def _steady_run(marks: list[Mark], running: int, length: int) -> list[Mark] | None:
    """The first `length` consecutive marks whose step gave every request an output."""
    start = 0
    for i, m in enumerate(marks):
        if m.outputs != running:
            start = i + 1
        elif i + 1 - start == length:
            return marks[start : i + 1]
    return None


def per_step(marks: list[Mark], warmup: int) -> dict[str, float]:
    """Microseconds per step over marks[warmup:], medians and means of each figure."""
    rows = []
    for prev, cur in zip(marks[warmup:], marks[warmup + 1 :], strict=False):
        rows.append(
            {
                "step": cur.step_wall,
                "outside_wall": cur.wall - prev.wall - cur.step_wall,
                "outside_cpu": cur.thread_cpu - prev.thread_cpu - cur.step_cpu,
                "plane_cpu": cur.process_cpu - prev.process_cpu - cur.step_cpu,
            }
        )
    out: dict[str, float] = {"steps": float(len(rows))}
    for key in rows[0]:
        values = [r[key] * 1e6 for r in rows]
        out[key + "_p50_us"] = statistics.median(values)
        out[key + "_mean_us"] = statistics.fmean(values)
    return out


def thread_times() -> dict[str, tuple[float, float]]:
    """Per thread of this process so far: (seconds on a CPU, seconds runnable but waiting for
    one), from schedstat, by Python thread name, else the OS name (gRPC's threads name
    themselves)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, tuple[float, float]] = {}
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            run_ns, wait_ns = (int(x) for x in (task / "schedstat").read_text().split()[:2])
            comm = (task / "comm").read_text().strip()
        except OSError:  # the thread ended meanwhile
            continue
        name = names.get(int(task.name), comm)
        cpu, wait = out.get(name, (0.0, 0.0))
        out[name] = (cpu + run_ns / 1e9, wait + wait_ns / 1e9)
    return out


def thread_figures(
    marks: list[Mark], k0: int, k1: int, t0: dict, t1: dict
) -> dict[str, float | dict[str, float]]:
    """Per step between marks k0 and k1: each thread's CPU, and how the engine thread's wall
    time splits into on-CPU, waiting for a core, and blocked (the GIL, locks)."""
    steps = k1 - k0
    cpu = {n: (t1[n][0] - t0.get(n, (0.0, 0.0))[0]) * 1e6 / steps for n in sorted(t1)}
    wall = (marks[k1 - 1].wall - marks[k0 - 1].wall) * 1e6 / steps
    engine = "engine-loop"
    runq = (t1[engine][1] - t0[engine][1]) * 1e6 / steps
    return {
        "threads_cpu_us": cpu,
        "engine_wall_us": wall,
        "engine_runq_us": runq,
        "engine_blocked_us": wall - cpu[engine] - runq,
    }


def engine_config(max_running: int, prompt_len: int, max_tokens: int) -> EngineConfig:
    per_req_blocks = -(-(prompt_len + max_tokens) // 16) + 1
    return EngineConfig(
        cache=CacheConfig(num_gpu_blocks_override=max_running * per_req_blocks + 16),
        scheduler=SchedulerConfig(
            max_num_batched_tokens=max(2048, max_running * prompt_len), max_num_seqs=max_running
        ),
        device="cpu",
    )


def prompt(i: int, prompt_len: int) -> list[int]:
    return [(7 * i + 3 * j) % 256 for j in range(prompt_len)]  # byte tokens of the tiny model


def offline(engine: LLMEngine, running: int, args: argparse.Namespace) -> dict[str, float]:
    """Median step wall/CPU of the same engine driven by a plain loop (no token plane)."""
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    for i in range(running):
        engine.add_request(f"off-{running}-{i}", prompt(i, args.prompt_len), params)
    meter = StepMeter()
    meter.install(engine)
    while engine.has_unfinished_requests():
        engine.step()
    del engine.step  # back to the class's method
    marks = _steady_run(meter.marks, running, args.warmup + args.steps + 1)
    if marks is None:
        raise RuntimeError("offline run had too few steady steps")
    walls = [m.step_wall * 1e6 for m in marks[args.warmup + 1 :]]
    cpus = [m.step_cpu * 1e6 for m in marks[args.warmup + 1 :]]
    return {"step_p50_us": statistics.median(walls), "step_cpu_p50_us": statistics.median(cpus)}


def stack(server: Any, meter: StepMeter, running: int, args: argparse.Namespace) -> dict:
    meter.expect(running)
    cmd = [sys.executable, __file__, "--client", server.address, "--running", str(running)]
    cmd += ["--connections", str(args.connections), "--prompt-len", str(args.prompt_len)]
    cmd += ["--max-tokens", str(args.max_tokens)]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        alive = lambda: child.poll() is None  # noqa: E731
        meter.wait_streak(args.warmup, alive, timeout_s=600)
        k0, t0 = len(meter.marks), thread_times()
        marks = meter.wait_streak(args.warmup + args.steps + 1, alive, timeout_s=600)
        k1, t1 = len(meter.marks), thread_times()
        all_marks = meter.marks
        out, _ = child.communicate(timeout=600)
    finally:
        if child.poll() is None:
            child.kill()
    if child.returncode != 0:
        raise RuntimeError(f"client exited with {child.returncode}")
    client = json.loads(out.strip().splitlines()[-1])
    result = per_step(marks, args.warmup)
    with meter.cond:
        total_steps = len(meter.marks)
    result["client_cpu_per_step_us"] = client["cpu_s"] * 1e6 / max(total_steps, 1)
    result["client"] = client
    result.update(thread_figures(all_marks, k0, k1, t0, t1))
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    from actors.replica.server import ReplicaServer

    levels = [int(x) for x in args.running.split(",")]
    config = engine_config(max(levels), args.prompt_len, args.max_tokens)
    meter = StepMeter()

    def build() -> LLMEngine:
        engine = LLMEngine(config)
        meter.install(engine)
        return engine

    server = ReplicaServer(build, "bench-token-plane")
    reference = LLMEngine(config)
    results: dict[str, Any] = {}
    try:
        for n in levels:
            res = stack(server, meter, n, args)
            res["offline"] = offline(reference, n, args)
            results[str(n)] = res
            print_row(n, res)
    finally:
        server.stop()
    return results


HEADER = ("running", "step", "offline", "out.wall", "out.cpu", "plane cpu", "client cpu")


def print_row(n: int, r: dict[str, Any]) -> None:
    cells = (
        r["step_p50_us"],
        r["offline"]["step_p50_us"],
        r["outside_wall_p50_us"],
        r["outside_cpu_p50_us"],
        r["plane_cpu_p50_us"],
        r["client_cpu_per_step_us"],
    )
    print(f"{n:>10}" + "".join(f"{c:>12.1f}" for c in cells), flush=True)
    threads = sorted(r["threads_cpu_us"].items(), key=lambda kv: -kv[1])
    busy = ", ".join(f"{name} {us:.0f}" for name, us in threads if us >= 5.0)
    print(f"{'':>10}  CPU us/step by thread (mean): {busy}")
    print(
        f"{'':>10}  engine thread us/step (mean): wall {r['engine_wall_us']:.0f} ="
        f" on CPU {r['threads_cpu_us']['engine-loop']:.0f} + waiting for a core"
        f" {r['engine_runq_us']:.0f} + blocked (GIL, locks) {r['engine_blocked_us']:.0f}",
        flush=True,
    )


# ---- the client process --------------------------------------------------------------------


async def drive(args: argparse.Namespace) -> dict[str, Any]:
    from actors.common.replica_client import ReplicaClient
    from actors.common.types import GenerateSpec

    clients = [ReplicaClient(args.client) for _ in range(args.connections)]
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)

    async def one(i: int) -> tuple[int, int]:
        spec = GenerateSpec(f"tp-{i}", tuple(prompt(i, args.prompt_len)), params)
        tokens, deltas, last = 0, 0, None
        async for d in clients[i % len(clients)].generate(spec):
            tokens, deltas, last = tokens + len(d.token_ids), deltas + 1, d
        if last is None or last.finish_reason != "length" or tokens != args.max_tokens:
            raise RuntimeError(f"request {i}: {tokens} tokens, last delta {last}")
        if last.num_output_tokens != args.max_tokens:
            raise RuntimeError(f"request {i}: usage {last.num_output_tokens}")
        return tokens, deltas

    cpu0 = _cpu_s()
    try:
        done = await asyncio.gather(*(one(i) for i in range(int(args.running))))
    finally:
        for c in clients:
            await c.close()
    return {
        "cpu_s": _cpu_s() - cpu0,
        "tokens": sum(t for t, _ in done),
        "deltas": sum(d for _, d in done),
    }


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# ---- entry -----------------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--running", default="1,32,256", help="comma-separated N")
    ap.add_argument("--connections", type=int, default=1, help="Generate streams (ingresses)")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=40, help="steady steps measured per N")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--client", help=argparse.SUPPRESS)  # internal: drive the server at ADDRESS
    ap.add_argument("--max-tokens", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not args.max_tokens:
        args.max_tokens = args.warmup + args.steps + MARGIN_STEPS
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.client:
        print(json.dumps(asyncio.run(drive(args))), flush=True)
        return
    torch.set_num_threads(args.threads)
    print("microseconds per engine step, p50 (step = engine.step(); out = engine thread")
    print("outside step(); plane cpu = process CPU - step CPU; client = driver CPU per step)")
    print("".join(f"{h:>10}" if i == 0 else f"{h:>12}" for i, h in enumerate(HEADER)))
    results = run(args)
    if args.out:
        meta = {
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "machine": f"{platform.machine()} {platform.processor()}".strip(),
            "torch": torch.__version__,
            "connections": args.connections,
            "prompt_len": args.prompt_len,
            "steps": args.steps,
            "max_tokens": args.max_tokens,
            "threads": args.threads,
        }
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
