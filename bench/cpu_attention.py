"""CPU paged attention: the per-request reference loop vs the vectorized torch path.

  .venv/bin/python bench/cpu_attention.py [--batch 128] [--context 256] [--steps 10]
                                          [--threads 0] [--out cpu_attention.json]

(a) One call of the attention op at the embedded tiny model's shape (4 q heads, 2 KV heads,
    D=32, fp32, block 16), a pure-decode batch of `batch` requests at `context` tokens.
(b) A whole ModelRunner decode step of the embedded tiny model (4 layers) at the same batch,
    after prefilling `batch` random prompts of `context` tokens: median ms per step.

"reference" runs `kernels.reference.paged_attention_ref` behind the same ops seam (what CPU
replicas ran before kernels/torch_paged.py); "vectorized" is the shipped path. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.common.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from actors.common.sampling_params import SamplingParams
from actors.engine.model_runner import ModelRunner
from actors.engine.outputs import ScheduledChunk, SchedulerOutput
from actors.engine.request import Request
from actors.models.embedded import MODEL_CONFIG, ensure_embedded_model
from kernels import reference, torch_paged

VARIANTS = ("reference", "vectorized")


@contextmanager
def variant(name: str) -> Iterator[None]:
    """The reference variant routes ops' torch path to the loop it ran before."""
    if name == "vectorized":
        yield
        return
    with mock.patch.object(torch_paged, "paged_attention_torch", reference.paged_attention_ref):
        yield


def median_ms(fn: Callable[[], object], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def op_batch(batch: int, context: int) -> tuple:
    """A decode batch over a cache whose blocks are handed out shuffled (a warm pool)."""
    hq, hkv = MODEL_CONFIG["num_attention_heads"], MODEL_CONFIG["num_key_value_heads"]
    d, bs = MODEL_CONFIG["head_dim"], 16
    per_req = -(-context // bs)
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(batch * per_req, bs, hkv, d, generator=gen)
    v = torch.randn(batch * per_req, bs, hkv, d, generator=gen)
    tables = torch.randperm(batch * per_req, generator=gen).to(torch.int32).view(batch, per_req)
    q = torch.randn(batch, hq, d, generator=gen)
    qsl = torch.arange(batch + 1, dtype=torch.int32)
    seq_lens = torch.full((batch,), context, dtype=torch.int32)
    return q, k, v, tables, qsl, seq_lens


def bench_op(batch: int, context: int, reps: int) -> dict:
    from kernels import ops

    q, k, v, tables, qsl, seq_lens = op_batch(batch, context)
    row = {}
    for name in VARIANTS:
        with variant(name):
            call = lambda: ops.paged_attention(  # noqa: E731
                q, k, v, tables, qsl, seq_lens, 0.1, max_query_len=1, max_seq_len=context
            )
            row[f"{name}_ms"] = median_ms(call, reps)
    return row


def prefill(runner: ModelRunner, reqs: list[Request], budget: int) -> None:
    bs = runner.block_size
    next_block = 0
    for r in reqs:
        n = -(-(r.num_tokens + 64) // bs)
        r.block_ids = list(range(next_block, next_block + n))
        next_block += n
    pending = list(reqs)
    while pending:
        chunks, used = [], 0
        while pending and used + pending[0].num_tokens <= budget:
            chunks.append(ScheduledChunk(pending[0], pending[0].num_tokens))
            used += pending.pop(0).num_tokens
        runner.execute(SchedulerOutput(chunks=chunks))
        for c in chunks:
            c.request.num_computed_tokens = c.request.num_tokens
            c.request.output_token_ids.append(1)


def decode_step(runner: ModelRunner, reqs: list[Request]) -> None:
    runner.execute(SchedulerOutput(chunks=[ScheduledChunk(r, 1) for r in reqs]))
    for r in reqs:
        r.num_computed_tokens += 1
        r.output_token_ids.append(1)


def bench_step(batch: int, context: int, steps: int) -> dict:
    """Median decode step; both variants decode the same requests (context grows by steps)."""
    bs = 16
    blocks = batch * (-(-(context + 64) // bs))
    config = EngineConfig(
        model=ModelConfig(model=str(ensure_embedded_model())),
        cache=CacheConfig(num_gpu_blocks_override=blocks + 1, enable_prefix_caching=False),
        scheduler=SchedulerConfig(max_num_seqs=batch, max_num_batched_tokens=4096),
        device="cpu",
    )
    runner = ModelRunner(config)
    rng = random.Random(0)
    vocab = int(MODEL_CONFIG["vocab_size"])
    reqs = [
        Request(f"r{i}", [rng.randrange(vocab) for _ in range(context)], SamplingParams())
        for i in range(batch)
    ]
    prefill(runner, reqs, 4096)
    row = {}
    for name in VARIANTS:
        with variant(name):
            row[f"{name}_ms"] = median_ms(lambda: decode_step(runner, reqs), steps)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "cpu_attention.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(sys.argv),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "context": args.context,
    }
    result["op"] = bench_op(args.batch, args.context, args.steps)
    print("attention op, one layer:", result["op"], flush=True)
    result["step"] = bench_step(args.batch, args.context, args.steps)
    print("decode step, 4 layers:  ", result["step"], flush=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
