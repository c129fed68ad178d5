"""Kernel benchmarks (run on a GPU host; not a test).

  PYTHONPATH=$PWD python3 bench/kernels.py [--batches 1,32,128,256] [--contexts 1024,4096,16384]
                                           [--no-flex] [--skip-lora] [--smoke]

(a) Decode attention, Llama-3-8B shape (32 q heads, 8 KV heads, D=128, bf16, block 16): achieved
    bandwidth (K+V bytes read / time) over the device copy bandwidth measured in the same run,
    for the paged Triton kernel, torch SDPA on contiguous KV of the same shapes, and torch
    flex_attention over the same paged cache through a block mask.
(b) Multi-LoRA, batch 128, rank 16, hidden 4096: shrink+expand vs a per-adapter torch loop for
    one layer, and the time added to the 32 layers' base matmuls (7 projections, fused as
    qkv / o / gate_up / down, each step captured in a CUDA graph) at 1/16/128 distinct adapters.
Prints compact tables; writes kernels_bench.json under $OUT when that is set.
--smoke runs tiny shapes on CPU under TRITON_INTERPRET=1 to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HQ, HKV, HEAD_DIM, BLOCK = 32, 8, 128, 16
HIDDEN, INTER, LAYERS, RANK = 4096, 14336, 32, 16


@dataclass(frozen=True)
class Shape:
    hq: int = HQ
    hkv: int = HKV
    head_dim: int = HEAD_DIM
    hidden: int = HIDDEN
    inter: int = INTER
    layers: int = LAYERS
    lora_batch: int = 128


def bench(fn: Callable[[], object], device: torch.device) -> float:
    """Median milliseconds; on the GPU with an L2 flush before each run."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median"))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def graphed(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """The call captured in a CUDA graph, as the model runner replays decode steps."""
    if device.type != "cuda":
        return fn
    fn()  # compile / autotune outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Device-to-device copy GB/s (read + write counted), the roofline's denominator."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src), device)
    return 2 * nbytes / ms / 1e6


# ---------------------------------------------------------------------------------------------
# (a) decode attention


def paged_cache(batch: int, ctx: int, s: Shape, device: torch.device):
    """Random cache whose blocks are handed out in a shuffled order, like a warm pool."""
    per_req = math.ceil(ctx / BLOCK)
    n_blocks = batch * per_req
    shape = (n_blocks, BLOCK, s.hkv, s.head_dim)
    k = torch.empty(shape, dtype=torch.bfloat16, device=device).uniform_(-1, 1)
    v = torch.empty(shape, dtype=torch.bfloat16, device=device).uniform_(-1, 1)
    perm = torch.randperm(n_blocks, device=device).to(torch.int32)
    tables = perm.view(batch, per_req)
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device=device)
    q = torch.randn(batch, s.hq, s.head_dim, dtype=torch.bfloat16, device=device)
    return q, k, v, tables, seq_lens


def flex_paged(q, k, v, tables, seq_lens, scale: float):
    """flex_attention over the whole paged pool: query row i may see only request i's pages."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    batch, per_req = tables.shape
    n_blocks = k.shape[0]
    owner = torch.empty(n_blocks, dtype=torch.int32, device=q.device)
    logical = torch.empty(n_blocks, dtype=torch.int32, device=q.device)
    owner[tables.flatten().long()] = (
        torch.arange(batch, device=q.device, dtype=torch.int32)[:, None]
        .expand(batch, per_req)
        .flatten()
    )
    logical[tables.flatten().long()] = (
        torch.arange(per_req, device=q.device, dtype=torch.int32)[None, :]
        .expand(batch, per_req)
        .flatten()
    )

    def mask_mod(b, h, q_idx, kv_idx):
        page = kv_idx // BLOCK
        pos = logical[page] * BLOCK + kv_idx % BLOCK
        return (owner[page] == q_idx) & (pos < seq_lens[q_idx])

    kv_len = n_blocks * BLOCK
    mask = create_block_mask(mask_mod, 1, 1, batch, kv_len, device=q.device, _compile=True)
    q4 = q.transpose(0, 1).unsqueeze(0)  # [1, Hq, B, D]
    k4 = k.view(1, kv_len, k.shape[2], k.shape[3]).transpose(1, 2)  # [1, Hkv, N*bs, D]
    v4 = v.view(1, kv_len, v.shape[2], v.shape[3]).transpose(1, 2)
    compiled = torch.compile(flex_attention, dynamic=False)
    return lambda: compiled(q4, k4, v4, block_mask=mask, scale=scale, enable_gqa=True)


def paged_timings(batch: int, ctx: int, s: Shape, device: torch.device, flex: bool) -> dict:
    """The paged kernels; the cache is freed when this returns, before SDPA's copy exists."""
    from kernels.attention_decode import paged_attention_decode, pick_num_splits

    q, k, v, tables, seq_lens = paged_cache(batch, ctx, s, device)
    scale = s.head_dim**-0.5
    out = torch.empty_like(q)
    row: dict = {"splits": pick_num_splits(batch, s.hkv, ctx, device)}

    def triton_step() -> None:
        paged_attention_decode(q, k, v, tables, seq_lens, scale, max_seq_len=ctx, out=out)

    row["triton_ms"] = bench(graphed(triton_step, device), device)
    if flex:
        try:
            row["flex_ms"] = bench(flex_paged(q, k, v, tables, seq_lens, scale), device)
        except Exception as exc:  # a baseline that cannot run is reported, not fatal
            row["flex_error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
    return row


def sdpa_timings(batch: int, ctx: int, s: Shape, device: torch.device) -> dict:
    q4 = torch.randn(batch, s.hq, 1, s.head_dim, dtype=torch.bfloat16, device=device)
    kc = torch.empty(batch, s.hkv, ctx, s.head_dim, dtype=torch.bfloat16, device=device)
    kc.uniform_(-1, 1)
    vc = torch.empty_like(kc).uniform_(-1, 1)
    scale = s.head_dim**-0.5
    try:
        fn = lambda: F.scaled_dot_product_attention(q4, kc, vc, scale=scale, enable_gqa=True)  # noqa: E731
        return {"sdpa_ms": bench(graphed(fn, device), device)}
    except Exception as exc:
        return {"sdpa_error": f"{type(exc).__name__}: {str(exc)[:160]}"}


def decode_row(batch: int, ctx: int, s: Shape, device: torch.device, flex: bool) -> dict:
    kv_bytes = 2 * batch * ctx * s.hkv * s.head_dim * 2  # K and V, bf16
    row: dict = {"batch": batch, "context": ctx, "kv_bytes": kv_bytes}
    row.update(paged_timings(batch, ctx, s, device, flex))
    if device.type == "cuda":
        torch.cuda.empty_cache()
    row.update(sdpa_timings(batch, ctx, s, device))
    return row


def run_decode(args: argparse.Namespace, s: Shape, device: torch.device, copy_gbs: float):
    rows = []
    for ctx in args.contexts:
        for batch in args.batches:
            flex = not args.no_flex and batch in args.flex_batches
            row = decode_row(batch, ctx, s, device, flex=flex)
            for name in ("triton", "sdpa", "flex"):
                if f"{name}_ms" in row:
                    gbs = row["kv_bytes"] / row[f"{name}_ms"] / 1e6
                    row[f"{name}_gbs"] = gbs
                    row[f"{name}_frac"] = gbs / copy_gbs
            rows.append(row)
            print(fmt_decode(row), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def fmt_decode(r: dict) -> str:
    cells = [f"B={r['batch']:<4} ctx={r['context']:<6} splits={r['splits']:<3}"]
    for name in ("triton", "sdpa", "flex"):
        if f"{name}_ms" in r:
            cells.append(f"{name} {r[f'{name}_ms']:8.3f} ms {100 * r[f'{name}_frac']:5.1f}%")
        else:
            cells.append(f"{name} {'n/a':>20}")
    return " | ".join(cells)


def run_prefill(s: Shape, device: torch.device, seqs: int, new: int, cached: int) -> dict:
    """Triton varlen prefill over paged KV vs SDPA (causal, contiguous) on the same shapes."""
    from kernels.attention_prefill import paged_attention_prefill

    total = cached + new
    q, k, v, tables, seq_lens = paged_cache(seqs, total, s, device)
    query = torch.randn(seqs * new, s.hq, s.head_dim, dtype=torch.bfloat16, device=device)
    qsl = torch.arange(0, seqs * new + 1, new, dtype=torch.int32, device=device)
    scale = s.head_dim**-0.5
    step = partial(paged_attention_prefill, query, k, v, tables, qsl, seq_lens, scale,
                   max_query_len=new)  # fmt: skip
    row = {"seqs": seqs, "new": new, "cached": cached}
    row["triton_ms"] = bench(graphed(step, device), device)
    # Causal FLOPs: each new row sees cached + its own position keys (QK and PV, 2 per MAC).
    pairs = seqs * (new * cached + new * (new + 1) / 2)
    flops = 4 * pairs * s.hq * s.head_dim
    row["triton_tflops"] = flops / row["triton_ms"] / 1e9
    if cached == 0:
        q4 = query.view(seqs, new, s.hq, s.head_dim).transpose(1, 2)
        kc = torch.randn(seqs, s.hkv, new, s.head_dim, dtype=torch.bfloat16, device=device)
        fn = partial(F.scaled_dot_product_attention, q4, kc, kc, is_causal=True, enable_gqa=True)
        row["sdpa_ms"] = bench(graphed(fn, device), device)
        row["sdpa_tflops"] = flops / row["sdpa_ms"] / 1e9
    sdpa = f", sdpa {row['sdpa_ms']:.3f} ms" if "sdpa_ms" in row else ""
    print(
        f"prefill {seqs} x {new} new after {cached} cached: triton {row['triton_ms']:.3f} ms "
        f"({row['triton_tflops']:.0f} TFLOP/s){sdpa}",
        flush=True,
    )
    return row


# ---------------------------------------------------------------------------------------------
# (b) multi-LoRA


def lora_group(in_dim: int, outs: list[int], n_adapters: int, rank: int, device: torch.device):
    """One group's pool with every adapter's rows laid out back to back (a fresh pool)."""
    from kernels.lora_meta import LoRAWeights

    p = len(outs)
    a_rows = n_adapters * p * rank
    a_pool = torch.empty(a_rows * in_dim, dtype=torch.bfloat16, device=device).normal_(0, 0.02)
    b_pool = torch.empty(n_adapters * rank * sum(outs), dtype=torch.bfloat16, device=device)
    b_pool.normal_(0, 0.02)
    j = torch.arange(rank, device=device)
    slot = torch.arange(n_adapters, device=device)[:, None, None]
    proj = torch.arange(p, device=device)[None, :, None]
    a_off = ((slot * p + proj) * rank + j) * in_dim  # [S, P, R]
    out_t = torch.tensor(outs, device=device)
    col = torch.cumsum(out_t, 0) - out_t  # start of projection p in an adapter's B block
    b_off = slot * rank * sum(outs) + col[None, :, None] * rank + j * out_t[None, :, None]
    return LoRAWeights(
        a_pool=a_pool,
        a_offsets=a_off.to(torch.int64).contiguous(),
        b_pool=b_pool,
        b_offsets=b_off.to(torch.int64).contiguous(),
        ranks=torch.full((n_adapters, p), rank, dtype=torch.int32, device=device),
        scales=torch.full((n_adapters, p), 2.0, dtype=torch.float32, device=device),
    )


def adapter_mats(w, slot: int, p: int, in_dim: int, out: int, rank: int):
    """Contiguous A [r, in] and B [out, r] of one adapter, for the torch-loop baseline."""
    a = w.a_pool[w.a_offsets[slot, p, :, None] + torch.arange(in_dim, device=w.a_pool.device)]
    b_t = w.b_pool[w.b_offsets[slot, p, :, None] + torch.arange(out, device=w.b_pool.device)]
    return a.contiguous(), b_t.t().contiguous()


def run_lora(args: argparse.Namespace, s: Shape, device: torch.device) -> dict:
    from kernels.lora import add_lora
    from kernels.lora_meta import prepare_lora_batch

    groups = scale_groups(s)
    t = s.lora_batch
    n_max = min(128, t)
    layers = []
    for _ in range(s.layers):
        base = {n: torch.empty(sum(o), k, dtype=torch.bfloat16, device=device).normal_(0, 0.02)
                for n, k, o in groups}  # fmt: skip
        lora = {n: lora_group(k, o, n_max, RANK, device) for n, k, o in groups}
        layers.append((base, lora))
    x = {k: torch.randn(t, k, dtype=torch.bfloat16, device=device) for k in (s.hidden, s.inter)}
    y = {n: torch.empty(t, sum(o), dtype=torch.bfloat16, device=device) for n, _, o in groups}
    result: dict = {"batch": t, "rank": RANK, "layers": s.layers, "rows": []}

    def step(batch) -> None:
        for base, lora in layers:
            for n, k, outs in groups:
                torch.matmul(x[k], base[n].t(), out=y[n])
                if batch is not None:
                    add_lora(y[n], x[k], lora[n], batch, outs)

    def timed(batch) -> float:
        return bench(graphed(lambda: step(batch), device), device)

    base_ms = timed(None)
    weight_bytes = sum(w.numel() * 2 for base, _ in layers for w in base.values())
    result["base_matmul_ms"] = base_ms
    result["base_weight_bytes"] = weight_bytes
    print(f"LoRA: base matmuls, {s.layers} layers, batch {t}: {base_ms:.3f} ms", flush=True)
    for distinct in sorted({1, min(16, n_max), n_max}):
        slots = (torch.arange(t, device=device) % distinct).to(torch.int32)
        batch = prepare_lora_batch(slots, n_max)
        prep_ms = bench(lambda slots=slots: prepare_lora_batch(slots, n_max), device)
        total = timed(batch)
        row = {
            "distinct": distinct,
            "with_lora_ms": total,
            "added_ms": total - base_ms,
            "added_frac": (total - base_ms) / base_ms,
            "prepare_ms": prep_ms,
        }
        result["rows"].append(row)
        print(
            f"LoRA: {distinct:>3} distinct: {total:.3f} ms, +{row['added_ms']:.3f} ms "
            f"(+{100 * row['added_frac']:.1f}% of base matmuls; batch prep {prep_ms:.3f} ms)",
            flush=True,
        )
    result["loop"] = lora_vs_loop(layers[0][1], groups, x, y, n_max, device)
    result["kernels"] = lora_breakdown(layers[0][1], groups, x, y, n_max, device)
    if args.lora_sweep:
        result["sweep"] = lora_sweep(layers[0][1]["gate_up"], x[s.hidden], y["gate_up"], n_max,
                                     [s.inter, s.inter], device)  # fmt: skip
    return result


def lora_sweep(w, x, y, n_adapters: int, outs: list[int], device: torch.device) -> list[dict]:
    """gate_up shrink split_k and expand block_n, to pick the launch heuristics."""
    from kernels.lora import lora_expand, lora_shrink
    from kernels.lora_meta import prepare_lora_batch

    rows = []
    for distinct in sorted({1, n_adapters}):
        slots = (torch.arange(x.shape[0], device=device) % distinct).to(torch.int32)
        batch = prepare_lora_batch(slots, n_adapters)
        s = lora_shrink(x, w, batch)
        for split in (1, 2, 4, 8, 16):
            ms = bench(graphed(partial(lora_shrink, x, w, batch, split_k=split), device), device)
            rows.append({"distinct": distinct, "kernel": "shrink", "split_k": split, "ms": ms})
        for block_n in (64, 128, 256):
            call = partial(lora_expand, y, s, w, batch, outs, block_n=block_n)
            ms = bench(graphed(call, device), device)
            rows.append({"distinct": distinct, "kernel": "expand", "block_n": block_n, "ms": ms})
    for r in rows:
        knob = f"split_k={r['split_k']}" if "split_k" in r else f"block_n={r['block_n']}"
        print(f"  sweep {r['distinct']:>3} distinct {r['kernel']} {knob}: {r['ms'] * 1e3:.1f} us")
    return rows


def lora_breakdown(lora, groups, x, y, n_adapters: int, device: torch.device) -> list[dict]:
    """Shrink and expand alone, per group, graphed: where the added time goes."""
    from kernels.lora_meta import prepare_lora_batch

    t = next(iter(x.values())).shape[0]
    rows = []
    for distinct in sorted({1, n_adapters}):
        slots = (torch.arange(t, device=device) % distinct).to(torch.int32)
        batch = prepare_lora_batch(slots, n_adapters)
        for n, k, outs in groups:
            row = breakdown_row(lora[n], x[k], y[n], outs, batch, device)
            rows.append({"group": n, "distinct": distinct, **row})
            print(
                f"  {n:<8} {distinct:>3} distinct: shrink {row['shrink_ms'] * 1e3:7.1f} us "
                f"({row['shrink_gbs']:6.0f} GB/s), expand {row['expand_ms'] * 1e3:7.1f} us "
                f"({row['expand_gbs']:6.0f} GB/s)",
                flush=True,
            )
    return rows


def scale_groups(s: Shape) -> list[tuple[str, int, list[int]]]:
    """GROUPS at the shape's sizes (the smoke run shrinks them)."""
    q = s.hq * s.head_dim
    kv = s.hkv * s.head_dim
    return [
        ("qkv", s.hidden, [q, kv, kv]),
        ("o", s.hidden, [s.hidden]),
        ("gate_up", s.hidden, [s.inter, s.inter]),
        ("down", s.inter, [s.hidden]),
    ]


def lora_vs_loop(lora, groups, x, y, n_adapters: int, device: torch.device) -> list[dict]:
    """One layer, eager: the kernels vs a per-adapter torch loop over contiguous A/B."""
    rows = []
    for distinct in sorted({1, min(16, n_adapters), n_adapters}):
        row = loop_row(lora, groups, x, y, n_adapters, distinct, device)
        rows.append(row)
        print(
            f"LoRA one layer eager, {distinct:>3} distinct: kernels {row['kernel_ms']:.3f} ms, "
            f"torch loop {row['loop_ms']:.3f} ms ({row['loop_ms'] / row['kernel_ms']:.1f}x)",
            flush=True,
        )
    return rows


def loop_row(lora, groups, x, y, n_adapters: int, distinct: int, device: torch.device) -> dict:
    from kernels.lora import add_lora
    from kernels.lora_meta import prepare_lora_batch

    t = next(iter(x.values())).shape[0]
    slots = (torch.arange(t, device=device) % distinct).to(torch.int32)
    batch = prepare_lora_batch(slots, n_adapters)
    index = [(slots == a).nonzero().flatten() for a in range(distinct)]
    mats = {
        n: [[adapter_mats(lora[n], a, p, k, o, RANK) for p, o in enumerate(outs)]
            for a in range(distinct)]
        for n, k, outs in groups
    }  # fmt: skip

    def kernels() -> None:
        for n, k, outs in groups:
            add_lora(y[n], x[k], lora[n], batch, outs)

    def loop() -> None:
        for n, k, outs in groups:
            for a in range(distinct):
                xa = x[k][index[a]]
                col = 0
                for p, o in enumerate(outs):
                    a_mat, b_mat = mats[n][a][p]
                    y[n][index[a], col : col + o] += (xa @ a_mat.t()) @ b_mat.t() * 2.0
                    col += o

    return {
        "distinct": distinct,
        "kernel_ms": bench(kernels, device),
        "loop_ms": bench(loop, device),
    }


def breakdown_row(w, x, y, outs: list[int], batch, device: torch.device) -> dict:
    from kernels.lora import lora_expand, lora_shrink

    distinct = int(torch.unique(batch.token_slots).numel())
    s = lora_shrink(x, w, batch)
    shrink_ms = bench(graphed(lambda: lora_shrink(x, w, batch), device), device)
    expand_ms = bench(graphed(lambda: lora_expand(y, s, w, batch, outs), device), device)
    a_bytes = distinct * len(outs) * RANK * x.shape[1] * 2
    b_bytes = distinct * RANK * sum(outs) * 2 + 2 * x.shape[0] * sum(outs) * 2  # B, y in + out
    return {
        "shrink_ms": shrink_ms,
        "expand_ms": expand_ms,
        "shrink_gbs": a_bytes / shrink_ms / 1e6,
        "expand_gbs": b_bytes / expand_ms / 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,32,128,256")
    ap.add_argument("--contexts", default="1024,4096,16384")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--flex-batches", default="1,32,128,256", help="flex compiles per shape")
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--skip-lora", action="store_true")
    ap.add_argument("--skip-prefill", action="store_true")
    ap.add_argument("--lora-sweep", action="store_true", help="gate_up launch-parameter sweep")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (interpreter)")
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    args.contexts = [int(c) for c in args.contexts.split(",")]
    args.flex_batches = [int(b) for b in args.flex_batches.split(",")]
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        device = torch.device("cpu")
        shape = Shape(hq=4, hkv=2, head_dim=64, hidden=64, inter=96, layers=2, lora_batch=16)
        args.batches, args.contexts, args.no_flex = [1, 3], [40], True
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        shape = Shape()
    else:
        sys.exit("bench/kernels.py needs a CUDA GPU (or --smoke for a CPU check of the script)")
    torch.manual_seed(0)
    report: dict = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(sys.argv),
    }
    copy_gbs = copy_bandwidth(device, (1 << 30) if device.type == "cuda" else (1 << 20))
    report["copy_gbs"] = copy_gbs
    print(f"{report['device']}: device copy bandwidth {copy_gbs:.0f} GB/s", flush=True)
    if not args.skip_decode:
        report["decode"] = run_decode(args, shape, device, copy_gbs)
    if not args.skip_prefill:
        shapes = [(4, 2048, 0), (4, 512, 1536)] if not args.smoke else [(2, 20, 0), (2, 8, 12)]
        report["prefill"] = [run_prefill(shape, device, *sh) for sh in shapes]
    if not args.skip_lora:
        report["lora"] = run_lora(args, shape, device)
    out_dir = os.environ.get("OUT")
    if out_dir:
        path = Path(out_dir) / "kernels_bench.json"
        path.write_text(json.dumps(report, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
