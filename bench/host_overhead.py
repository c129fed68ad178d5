"""Host-side (CPU) time of one engine step, excluding the model forward (not a test).

  python bench/host_overhead.py [--batches 64,128,256] [--prompt-len 64] [--steps 30]
                                [--warmup 5] [--out result.json]

Runs the real LLMEngine on CPU with the embedded tiny model (fleetlm/tiny-llama): `batch`
greedy ignore_eos requests with `prompt-len`-token prompts are prefilled, then `steps` pure
decode steps are timed. The phases are timed by wrapping the engine's own collaborators on the
instance (scheduler.schedule, runner._build, runner.execute, sampler.sample, scheduler.update,
engine._publish) with time.perf_counter, so product code carries no timers:

  host     = step - (execute - build)          everything the GPU would wait for
  schedule, build, sample, update, publish     the named phases
  other    = host - the named phases           step()'s own glue (dicts, lists)
  forward  = execute - build                   the model itself (reported, not in host)

The tiny model makes forward cheap on CPU, but the host phases do the same Python work per
request as with an 8B model: they scale with the batch, not the model size.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.common.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from actors.common.sampling_params import SamplingParams
from actors.engine.engine import LLMEngine

PHASES = ("schedule", "build", "sample", "update", "publish")


@dataclass
class PhaseTimer:
    """Accumulates perf_counter seconds per phase within one step."""

    seconds: dict[str, float] = field(default_factory=dict)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

        return timed


def make_engine(batch: int, prompt_len: int, steps: int) -> LLMEngine:
    per_req_blocks = -(-(prompt_len + steps + 16) // 16) + 1
    config = EngineConfig(
        model=ModelConfig(),
        cache=CacheConfig(num_gpu_blocks_override=batch * per_req_blocks + 16),
        scheduler=SchedulerConfig(max_num_batched_tokens=4096, max_num_seqs=max(batch, 256)),
        device="cpu",
    )
    return LLMEngine(config)


def instrument(engine: LLMEngine, timer: PhaseTimer) -> None:
    """Shadow the collaborators' bound methods on the instances with timed wrappers."""
    engine.scheduler.schedule = timer.wrap("schedule", engine.scheduler.schedule)
    engine.scheduler.update = timer.wrap("update", engine.scheduler.update)
    engine.sampler.sample = timer.wrap("sample", engine.sampler.sample)
    engine._publish = timer.wrap("publish", engine._publish)
    engine.runner._build = timer.wrap("build", engine.runner._build)
    engine.runner.execute = timer.wrap("execute", engine.runner.execute)


def run_batch(batch: int, prompt_len: int, steps: int, warmup: int) -> dict[str, float]:
    engine = make_engine(batch, prompt_len, steps + warmup)
    vocab = engine.runner.vocab_size
    params = SamplingParams(temperature=0.0, max_tokens=steps + warmup + 8, ignore_eos=True)
    for i in range(batch):
        prompt = [(7 * i + 3 * j) % 256 for j in range(prompt_len)]  # byte tokens < vocab
        assert max(prompt) < vocab
        engine.add_request(f"r{i}", prompt, params)
    # Prefill until every request has its first token: from then on each step is a pure decode.
    while engine.scheduler.num_waiting or any(
        r.num_output_tokens == 0 for r in engine.scheduler.running_requests()
    ):
        engine.step()
    timer = PhaseTimer()
    instrument(engine, timer)
    rows: list[dict[str, float]] = []
    for i in range(warmup + steps):
        timer.seconds.clear()
        t0 = time.perf_counter()
        outs = engine.step()
        total = time.perf_counter() - t0
        if len(outs) != batch:
            raise RuntimeError(f"expected {batch} outputs per decode step, got {len(outs)}")
        if i < warmup:
            continue
        s = timer.seconds
        forward = s["execute"] - s["build"]
        host = total - forward
        row = {p: s.get(p, 0.0) * 1e3 for p in PHASES}
        row["host"] = host * 1e3
        row["other"] = row["host"] - sum(row[p] for p in PHASES)
        row["forward"] = forward * 1e3
        rows.append(row)
    keys = ("host", *PHASES, "other", "forward")
    return {k: statistics.median(r[k] for r in rows) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="64,128,256")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    results = {}
    header = ("batch", "host", *PHASES, "other", "forward")
    print("median ms per decode step (host excludes the model forward)")
    print("".join(f"{h:>10}" for h in header))
    for b in batches:
        res = run_batch(b, args.prompt_len, args.steps, args.warmup)
        results[b] = res
        print(f"{b:>10}" + "".join(f"{res[h]:>10.3f}" for h in header[1:]))
    if args.out:
        meta = {
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "prompt_len": args.prompt_len,
            "steps": args.steps,
            "threads": args.threads,
        }
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
