"""Paged attention for decode: one query token per request, GQA, split-K (flash-decoding).

One program handles one (request, KV head, split): it loads the GROUP query heads that share the
KV head as one [GROUP_PAD, D] tile, so each K/V tile is read once for the whole group. Long
contexts are cut into `num_splits` ranges so that even batch 1 fills the GPU; a second, tiny
kernel merges the per-split partial outputs with their log-sum-exp weights.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kernels import checks
from kernels.triton_utils import mma, next_pow2

LOG2E = 1.4426950408889634
MIN_TOKENS_PER_SPLIT = 256  # a split below this spends more on the merge than it saves


@triton.jit
def _decode_split_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    out_ptr,
    part_out_ptr,
    part_lse_ptr,
    scale_log2,
    stride_qb,
    stride_qh,
    stride_kn,
    stride_kb,
    stride_kh,
    stride_vn,
    stride_vb,
    stride_vh,
    stride_bt,
    stride_ob,
    stride_oh,
    num_blocks,
    max_blocks,
    tokens_per_split,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    KV_BLOCK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    UPCAST: tl.constexpr,
):
    req = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + req)
    # A block id past the table (or the pool) is never followed: clamp the range instead.
    seq_len = tl.minimum(seq_len, max_blocks * KV_BLOCK)
    start = split * tokens_per_split
    end = tl.minimum(start + tokens_per_split, seq_len)

    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, HEAD_DIM)
    heads = kv_head * GROUP + g
    g_valid = g < GROUP
    q = tl.load(
        q_ptr + req * stride_qb + heads[:, None] * stride_qh + d[None, :],
        mask=g_valid[:, None],
        other=0.0,
    )  # [G, D]

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    bt_row = block_tables_ptr + req.to(tl.int64) * stride_bt
    for n0 in range(start, end, BLOCK_N):
        offs = n0 + tl.arange(0, BLOCK_N)
        valid = offs < end
        blk = tl.load(bt_row + offs // KV_BLOCK, mask=valid, other=0).to(tl.int64)
        valid = valid & (blk >= 0) & (blk < num_blocks)
        tok = offs % KV_BLOCK
        k_rows = k_ptr + blk * stride_kn + tok * stride_kb + kv_head * stride_kh
        k = tl.load(k_rows[:, None] + d[None, :], mask=valid[:, None], other=0.0)  # [N, D]
        s = mma(q, tl.trans(k), UPCAST) * scale_log2  # [G, N]
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])  # [G, N]
        alpha = tl.math.exp2(m_i - m_safe)
        v_rows = v_ptr + blk * stride_vn + tok * stride_vb + kv_head * stride_vh
        v = tl.load(v_rows[:, None] + d[None, :], mask=valid[:, None], other=0.0)  # [N, D]
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + mma(p.to(v.dtype), v, UPCAST)
        m_i = m_new

    has_any = l_i > 0.0
    o = acc / tl.where(has_any, l_i, 1.0)[:, None]  # [G, D]
    if NUM_SPLITS == 1:
        o_ptrs = out_ptr + req * stride_ob + heads[:, None] * stride_oh + d[None, :]
        tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=g_valid[:, None])
    else:
        # part_out: [B, Hq, S, D] fp32, part_lse: [B, Hq, S] fp32 (log2 domain), contiguous.
        row = (req * (GROUP * tl.num_programs(1)) + heads) * NUM_SPLITS + split  # [G]
        lse = tl.where(has_any, m_i + tl.math.log2(tl.where(has_any, l_i, 1.0)), float("-inf"))
        tl.store(part_lse_ptr + row, lse, mask=g_valid)
        p_ptrs = part_out_ptr + row.to(tl.int64)[:, None] * HEAD_DIM + d[None, :]
        tl.store(p_ptrs, o, mask=g_valid[:, None])


@triton.jit
def _decode_reduce_kernel(
    part_out_ptr,
    part_lse_ptr,
    out_ptr,
    stride_ob,
    stride_oh,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
):
    req = tl.program_id(0)
    head = tl.program_id(1)
    sp = tl.arange(0, SPLITS_PAD)
    d = tl.arange(0, HEAD_DIM)
    row = (req * NUM_HEADS + head) * NUM_SPLITS
    lse = tl.load(part_lse_ptr + row + sp, mask=sp < NUM_SPLITS, other=float("-inf"))
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)  # no split saw a token: all weights are 0
    w = tl.where(lse > float("-inf"), tl.math.exp2(lse - m), 0.0)  # [S]
    parts = tl.load(
        part_out_ptr + (row + sp.to(tl.int64))[:, None] * HEAD_DIM + d[None, :],
        mask=(sp < NUM_SPLITS)[:, None],
        other=0.0,
    )  # [S, D]
    total = tl.sum(w, 0)
    o = tl.sum(parts * w[:, None], 0) / tl.where(total > 0.0, total, 1.0)
    o_ptrs = out_ptr + req * stride_ob + head * stride_oh + d
    tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty))


def pick_num_splits(batch: int, kv_heads: int, max_seq_len: int, device: torch.device) -> int:
    """Enough (request, head, split) programs to cover every SM about twice."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    wanted = math.ceil(2 * sms / max(1, batch * kv_heads))
    most = max(1, math.ceil(max_seq_len / MIN_TOKENS_PER_SPLIT))
    return max(1, min(wanted, most, 64))


def paged_attention_decode(
    query: torch.Tensor,  # [B, Hq, D]
    k_cache: torch.Tensor,  # [N, bs, Hkv, D]
    v_cache: torch.Tensor,  # [N, bs, Hkv, D]
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    seq_lens: torch.Tensor,  # [B] int32
    scale: float,
    *,
    max_seq_len: int,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,  # [B, Hq, D]
) -> torch.Tensor:  # [B, Hq, D]
    """Attention of each request's single new token over its `seq_lens[i]` cached tokens.

    The new token's K/V must already be written. `max_seq_len` (a host int, >= every seq_len)
    sizes the splits; for CUDA graphs pass a fixed `num_splits` and the model's max length.
    Table entries past a request's length are never read (they may be -1); a block id outside
    [0, N) inside the length is skipped instead of read. seq_len 0 gives a zero output row.
    """
    checks.check_decode(query, k_cache, v_cache, block_tables, seq_lens, scale)
    if max_seq_len < 0:
        raise ValueError(f"max_seq_len: must be >= 0, got {max_seq_len}")
    b, hq, d = query.shape
    n_blocks, kv_block, hkv, _ = k_cache.shape
    group = hq // hkv
    if out is None:
        out = torch.empty_like(query)
    checks.check_tensor("out", out, ndim=3, dtypes=(query.dtype,), device=query.device)
    if out.shape != query.shape:
        raise ValueError(f"out: shape {tuple(out.shape)} must equal query {tuple(query.shape)}")
    if b == 0:
        return out
    block_n = 64 if d <= 128 else 32
    if num_splits is None:
        num_splits = pick_num_splits(b, hkv, max_seq_len, query.device)
    if num_splits < 1:
        raise ValueError(f"num_splits: must be >= 1, got {num_splits}")
    per_split = max(1, math.ceil(max(1, max_seq_len) / num_splits))
    per_split = math.ceil(per_split / block_n) * block_n
    if num_splits > 1:
        part_out = torch.empty((b, hq, num_splits, d), dtype=torch.float32, device=query.device)
        part_lse = torch.empty((b, hq, num_splits), dtype=torch.float32, device=query.device)
    else:
        part_out = part_lse = out  # unused by the kernel when NUM_SPLITS == 1
    _decode_split_kernel[(b, hkv, num_splits)](
        query, k_cache, v_cache, block_tables, seq_lens, out, part_out, part_lse,
        scale * LOG2E,
        query.stride(0), query.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        n_blocks, block_tables.shape[1], per_split,
        GROUP=group, GROUP_PAD=max(16, next_pow2(group)), HEAD_DIM=d, KV_BLOCK=kv_block,
        BLOCK_N=block_n, NUM_SPLITS=num_splits, UPCAST=checks.upcast_dot(query.dtype),
        num_warps=4,
    )  # fmt: skip
    if num_splits > 1:
        _decode_reduce_kernel[(b, hq)](
            part_out, part_lse, out, out.stride(0), out.stride(1),
            NUM_HEADS=hq, HEAD_DIM=d, NUM_SPLITS=num_splits, SPLITS_PAD=next_pow2(num_splits),
            num_warps=4,
        )  # fmt: skip
    return out
