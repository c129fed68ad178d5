"""Where one decode step's time goes, host and device (run on a GPU host; not a test).

  python bench/step_profile.py [--model-shape llama3-8b] [--batches 1,128] [--context 1024]
                               [--steps 30] [--out-dir $OUT]

For each batch size: the median step time; the GPU time of the step's decode CUDA graph alone
(replayed back to back, so `rest` = step - graph is the host side, sampling and copies); a
torch.profiler table of 5 steps; and a cProfile of `engine.step()` (top functions by own
time). Writes step_profile_<shape>.json and one text report per batch size to --out-dir.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.common.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from actors.common.sampling_params import SamplingParams
from actors.engine.engine import LLMEngine
from bench.engine import SHAPES, make_model_dir, sync


def start_decode(engine: LLMEngine, vocab: int, batch: int, context: int, steps: int) -> list[str]:
    """Adds `batch` requests and prefills them all; returns their ids."""
    rng = random.Random(batch)
    params = SamplingParams(temperature=0.0, max_tokens=4 * steps + 8, ignore_eos=True)
    ids = [f"p{batch}-{i}" for i in range(batch)]
    for rid in ids:
        engine.add_request(rid, [rng.randrange(vocab) for _ in range(context)], params)
    started: set[str] = set()
    while len(started) < batch:
        started.update(o.request_id for o in engine.step() if o.new_token_ids)
    return ids


def forward_ms(engine: LLMEngine, batch: int) -> float | None:
    """GPU time of the decode graph alone (replayed on the last step's inputs), per step."""
    graphs = engine.runner.decode_graphs
    if graphs is None:
        return None
    graph = graphs.graphs[(next(s for s in graphs.sizes if s >= batch), False)]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(20):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 20


def profile_batch(engine: LLMEngine, vocab: int, batch: int, args: argparse.Namespace) -> dict:
    ids = start_decode(engine, vocab, batch, args.context, args.steps)
    device = engine.runner.device
    times = []
    for _ in range(args.steps):
        sync(device)
        t0 = time.perf_counter()
        engine.step()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    n = 5
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            engine.step()
        sync(device)
    busy = forward_ms(engine, batch)
    host = cProfile.Profile()
    host.enable()
    for _ in range(args.steps):
        engine.step()
    sync(device)
    host.disable()
    text = io.StringIO()
    pstats.Stats(host, stream=text).sort_stats("tottime").print_stats(30)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
    Path(args.out_dir, f"step_profile_{args.model_shape}_b{batch}.txt").write_text(
        text.getvalue() + "\n" + table
    )
    for rid in ids:
        engine.abort_request(rid)
    while engine.has_unfinished_requests():
        engine.step()
    step = statistics.median(times[2:])
    rest = None if busy is None else step - busy
    return {"batch": batch, "step_ms": step, "forward_graph_ms": busy, "rest_ms": rest}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-shape", default="llama3-8b", choices=sorted(SHAPES))
    ap.add_argument("--batches", default="1,128")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out-dir", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    model_dir = make_model_dir(args.model_shape)
    cfg = json.loads((model_dir / "config.json").read_text())
    config = EngineConfig(
        model=ModelConfig(model=str(model_dir), dtype="bfloat16", load_format="dummy"),
        cache=CacheConfig(gpu_memory_utilization=0.85),
        scheduler=SchedulerConfig(max_num_seqs=256, max_num_batched_tokens=8192),
        device="cuda",
    )
    engine = LLMEngine(config)
    rows = [profile_batch(engine, cfg["vocab_size"], int(b), args) for b in args.batches.split(",")]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "gpu": torch.cuda.get_device_name(0),
        "shape": args.model_shape,
        "command": " ".join(sys.argv),
        "rows": rows,
    }
    print(json.dumps(result, indent=2))
    Path(args.out_dir, f"step_profile_{args.model_shape}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
