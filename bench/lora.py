"""Multi-LoRA throughput and adapter load time on one GPU (not a test; figures go to
docs/benchmarks.md with the command, the GPU and the date).

  python bench/lora.py [--adapters 1,10,100,1000] [--requests 512] [--max-loras 32] [--eager]
  python bench/lora.py --smoke      # the embedded tiny model on CPU: checks the script only

A Llama-3-8B-shaped dummy base (bf16), rank-16 adapters on all seven projections. The same
offline workload (ShareGPT-like lengths, all submitted at once) runs:
  base           LoRA off (max_loras 0): the engine as it serves base traffic
  base-lora-on   LoRA on, no request names an adapter (what enabling LoRA costs base traffic)
  lora-K         every request names one of K adapters, Zipf-distributed (s = 1.1)
and reports output tokens/s and the ratio to `base`. Both engines use CUDA graphs (decode steps
with adapters replay the LoRA graphs); --eager runs both without. Adapters are made in
memory with random weights; to keep host memory bounded, the K adapters share 8 weight sets
(each still has its own name, version and device slot, so paging costs what it costs).
It also times one adapter's host-to-device load against its size / the pinned host-to-device
bandwidth measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.common.config import (
    LORA_MODULES,
    CacheConfig,
    EngineConfig,
    LoRAConfig,
    ModelConfig,
    SchedulerConfig,
)
from actors.common.sampling_params import SamplingParams
from actors.engine.engine import LLMEngine
from actors.lora.adapter import LoRAAdapter, module_dims
from actors.lora.registry import for_device
from bench.engine import make_model_dir

RANK = 16
WEIGHT_SETS = 8


def synthetic_adapters(engine: LLMEngine, count: int, seed: int = 0) -> list[LoRAAdapter]:
    arch = engine.runner.arch
    gen = torch.Generator().manual_seed(seed)
    sets = []
    for _ in range(min(WEIGHT_SETS, count)):
        weights = {}
        for layer in range(arch.num_layers):
            for module in LORA_MODULES:
                i, o = module_dims(arch, module)
                a = (torch.randn(RANK, i, generator=gen) * 0.01).to(torch.bfloat16)
                b = (torch.randn(RANK, o, generator=gen) * 0.01).to(torch.bfloat16)  # B^T
                if torch.cuda.is_available():  # as the registry keeps them: async copies
                    a, b = a.pin_memory(), b.pin_memory()
                weights[(layer, module)] = (a, b)
        sets.append(weights)
    return [
        LoRAAdapter(f"a{k}", "<memory>", RANK, 2.0, LORA_MODULES, sets[k % len(sets)], f"v{k}")
        for k in range(count)
    ]


def zipf_choice(rng: random.Random, count: int, s: float = 1.1) -> int:
    weights = [1 / (k + 1) ** s for k in range(count)]
    return rng.choices(range(count), weights)[0]


def workload(n: int, vocab: int, smoke: bool, seed: int = 0) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt_len = 16 if smoke else min(2048, max(8, int(rng.lognormvariate(5.0, 0.9))))
        max_tokens = 8 if smoke else min(1024, max(8, int(rng.lognormvariate(4.9, 0.9))))
        out.append(([rng.randrange(4, vocab) for _ in range(prompt_len)], max_tokens))
    return out


def run(engine: LLMEngine, reqs: list[tuple[list[int], int]], adapters: list[str | None]) -> float:
    params = [SamplingParams(temperature=0.0, max_tokens=m, ignore_eos=True) for _, m in reqs]
    t0 = time.perf_counter()
    results = engine.generate([p for p, _ in reqs], params, adapters=adapters)
    seconds = time.perf_counter() - t0
    return sum(len(r.token_ids[0]) for r in results) / seconds


def load_time(engine: LLMEngine, adapter: LoRAAdapter) -> dict[str, float]:
    pool = engine.runner.lora.pool
    pinned = replace(for_device(adapter, torch.bfloat16, pin=True), version="load-probe")
    host = torch.empty(1 << 30, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dev.copy_(host)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    dev.copy_(host)
    torch.cuda.synchronize()
    h2d = (1 << 30) / (time.perf_counter() - t0)
    del host, dev
    t0 = time.perf_counter()
    pool.ensure([pinned])
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {
        "adapter_bytes": adapter.nbytes,
        "load_ms": seconds * 1e3,
        "h2d_GBps": h2d / 1e9,
        "bound_ms": adapter.nbytes / h2d * 1e3,
        "ratio_to_bound": seconds / (adapter.nbytes / h2d),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--adapters", default="1,10,100,1000")
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--max-loras", type=int, default=32)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--eager", action="store_true", help="no CUDA graphs in either engine")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "lora.json"))
    args = ap.parse_args()
    counts = [int(c) for c in args.adapters.split(",")]
    smoke = args.smoke
    shape = "tiny" if smoke else "llama3-8b"
    if smoke:
        counts, args.requests = [1, 3], 12
    model = ModelConfig(
        model=str(make_model_dir(shape)),
        dtype="float32" if smoke else "bfloat16",
        load_format="auto" if smoke else "dummy",
        max_model_len=1024 if smoke else 4096,
    )
    sched = SchedulerConfig(max_num_seqs=8 if smoke else 256, max_num_batched_tokens=8192)
    cache = CacheConfig(gpu_memory_utilization=0.85)
    device = "cpu" if smoke else "cuda"
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "gpu": "none (smoke)" if smoke else torch.cuda.get_device_name(0),
        "command": " ".join(["python3", *sys.argv]),
        "runs": {},
        "adapter_loads": {},  # copies into device slots during each run (prefetches included)
        "distinct_adapters": {},  # adapters the run's requests name
    }
    lora = LoRAConfig(max_loras=min(args.max_loras, max(counts)), max_lora_rank=RANK)
    base = LLMEngine(
        EngineConfig(
            model=model, cache=cache, scheduler=sched, device=device, enforce_eager=args.eager
        )
    )
    vocab = min(base.runner.vocab_size, base.tokenizer.vocab_size)
    reqs = workload(args.requests, vocab, smoke)
    warmup = reqs[: max(1, len(reqs) // 8)]  # the first run in a process is slower: not timed
    run(base, warmup, [None] * len(warmup))
    report["runs"]["base"] = run(base, reqs, [None] * len(reqs))
    del base
    engine = LLMEngine(
        EngineConfig(
            model=model,
            cache=cache,
            scheduler=sched,
            device=device,
            enforce_eager=args.eager,
            lora=lora,
        )
    )
    run(engine, warmup, [None] * len(warmup))
    report["runs"]["base-lora-on"] = run(engine, reqs, [None] * len(reqs))
    rng = random.Random(1)
    for count in counts:
        adapters = synthetic_adapters(engine, count)
        for a in adapters:
            engine.install_adapter(a)
        names = [adapters[zipf_choice(rng, count)].name for _ in reqs]
        loads = engine.stats().adapter_loads
        report["runs"][f"lora-{count}"] = run(engine, reqs, names)
        report["adapter_loads"][f"lora-{count}"] = engine.stats().adapter_loads - loads
        report["distinct_adapters"][f"lora-{count}"] = len(set(names))
        for a in adapters:
            engine.remove_adapter(a.name)
        print(json.dumps({k: round(v, 1) for k, v in report["runs"].items()}), flush=True)
    runs = report["runs"]
    report["ratio_to_base"] = {k: v / runs["base"] for k, v in runs.items()}
    if not smoke:
        report["load"] = load_time(engine, synthetic_adapters(engine, 1, seed=7)[0])
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "command"}, indent=1))


if __name__ == "__main__":
    main()
