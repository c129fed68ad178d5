"""Paged attention for prefill/extend over a packed (varlen) batch.

Request i owns query rows `query_start_loc[i]:query_start_loc[i + 1]`: its LAST q_len positions
of a context of `seq_lens[i]` tokens, so the causal mask is offset by the `seq_lens[i] - q_len`
tokens already cached (chunked prefill, prefix-cache hits). One program handles BLOCK_M query
rows of one request and one query head; it walks the request's block table only up to the last
key its rows may see. Decode rows (q_len 1) may be mixed in; a pure-decode batch should use
kernels.attention_decode, which reads each K/V tile once per GQA group and splits long contexts.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import checks
from kernels.attention_decode import LOG2E
from kernels.triton_utils import mma


@triton.jit
def _prefill_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    block_tables_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    out_ptr,
    scale_log2,
    stride_qt,
    stride_qh,
    stride_kn,
    stride_kb,
    stride_kh,
    stride_vn,
    stride_vb,
    stride_vh,
    stride_bt,
    stride_ot,
    stride_oh,
    num_blocks,
    max_blocks,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    KV_BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr,
):
    req = tl.program_id(0)
    m_tile = tl.program_id(1)
    head = tl.program_id(2)
    q_start = tl.load(query_start_loc_ptr + req)
    q_len = tl.load(query_start_loc_ptr + req + 1) - q_start
    if m_tile * BLOCK_M >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + req)
    cached = seq_len - q_len  # tokens before this chunk, already in the cache
    kv_head = head // GROUP

    offs_m = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    m_valid = offs_m < q_len
    d = tl.arange(0, HEAD_DIM)
    rows = (q_start + offs_m).to(tl.int64)
    q = tl.load(
        q_ptr + rows[:, None] * stride_qt + head * stride_qh + d[None, :],
        mask=m_valid[:, None],
        other=0.0,
    )  # [M, D]
    q_pos = cached + offs_m  # [M] absolute positions of the query rows

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    # Keys beyond the tile's last query position are all masked: stop there.
    hi = tl.minimum(seq_len, cached + (m_tile + 1) * BLOCK_M)
    hi = tl.minimum(hi, max_blocks * KV_BLOCK)
    bt_row = block_tables_ptr + req.to(tl.int64) * stride_bt
    for n0 in range(0, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_valid = offs_n < hi
        blk = tl.load(bt_row + offs_n // KV_BLOCK, mask=n_valid, other=0).to(tl.int64)
        n_valid = n_valid & (blk >= 0) & (blk < num_blocks)
        tok = offs_n % KV_BLOCK
        k_rows = k_ptr + blk * stride_kn + tok * stride_kb + kv_head * stride_kh
        k = tl.load(k_rows[:, None] + d[None, :], mask=n_valid[:, None], other=0.0)  # [N, D]
        s = mma(q, tl.trans(k), UPCAST) * scale_log2  # [M, N]
        visible = n_valid[None, :] & (offs_n[None, :] <= q_pos[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        v_rows = v_ptr + blk * stride_vn + tok * stride_vb + kv_head * stride_vh
        v = tl.load(v_rows[:, None] + d[None, :], mask=n_valid[:, None], other=0.0)  # [N, D]
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + mma(p.to(v.dtype), v, UPCAST)
        m_i = m_new

    o = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    o_ptrs = out_ptr + rows[:, None] * stride_ot + head * stride_oh + d[None, :]
    tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=m_valid[:, None])


def paged_attention_prefill(
    query: torch.Tensor,  # [T, Hq, D] packed query rows
    k_cache: torch.Tensor,  # [N, bs, Hkv, D]
    v_cache: torch.Tensor,  # [N, bs, Hkv, D]
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    query_start_loc: torch.Tensor,  # [B + 1] int32, non-decreasing, last == T
    seq_lens: torch.Tensor,  # [B] int32, seq_lens[i] >= q_len_i
    scale: float,
    *,
    max_query_len: int,
    out: torch.Tensor | None = None,  # [T, Hq, D]
) -> torch.Tensor:  # [T, Hq, D]
    """Causal attention of each request's new rows over its whole paged context.

    The chunk's own K/V must already be written to the cache. `max_query_len` (host int, >= every
    q_len) sizes the grid. Rows of T not covered by any request are left untouched in `out`.
    """
    checks.check_prefill(query, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale)
    if max_query_len < 0:
        raise ValueError(f"max_query_len: must be >= 0, got {max_query_len}")
    t, hq, d = query.shape
    n_blocks, kv_block, hkv, _ = k_cache.shape
    if out is None:
        out = torch.empty_like(query)
    checks.check_tensor("out", out, ndim=3, dtypes=(query.dtype,), device=query.device)
    if out.shape != query.shape:
        raise ValueError(f"out: shape {tuple(out.shape)} must equal query {tuple(query.shape)}")
    b = block_tables.shape[0]
    if t == 0 or b == 0 or max_query_len == 0:
        return out
    block_m = 16 if max_query_len <= 16 else 64
    block_n = 64 if d <= 64 else 32
    grid = (b, triton.cdiv(max_query_len, block_m), hq)
    _prefill_kernel[grid](
        query, k_cache, v_cache, block_tables, query_start_loc, seq_lens, out,
        scale * LOG2E,
        query.stride(0), query.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        n_blocks, block_tables.shape[1],
        GROUP=hq // hkv, HEAD_DIM=d, KV_BLOCK=kv_block, BLOCK_M=block_m, BLOCK_N=block_n,
        UPCAST=checks.upcast_dot(query.dtype),
        num_warps=4 if block_m == 16 else 8,
    )  # fmt: skip
    return out
