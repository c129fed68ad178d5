"""Multi-LoRA shrink and expand kernels (SGMV/BGMV family) over the paged adapter pool.

Semantics, pool layout and batching are documented in kernels.lora_meta; the plain-torch twin is
reference.lora_ref. Two launches per projection group: shrink (x -> s) and expand (s -> y).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from kernels import checks
from kernels.lora_meta import (
    ALIGN,
    BLOCK_M,
    MAX_PROJECTIONS,
    LoRABatch,
    LoRAWeights,
    check_lora_batch,
    check_lora_weights,
)
from kernels.triton_utils import mma, next_pow2


@triton.jit
def _shrink_kernel(
    x_ptr,
    a_pool_ptr,
    a_off_ptr,
    ranks_ptr,
    sorted_ptr,
    work_slot_ptr,
    work_start_ptr,
    work_rows_ptr,
    s_ptr,
    in_dim,
    k_per_split,
    stride_xt,
    stride_off_s,
    stride_off_p,
    stride_rank_s,
    stride_s_split,
    stride_st,
    stride_sp,
    MAX_RANK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    item = tl.program_id(0)
    proj = tl.program_id(1)
    k_split = tl.program_id(2)
    # The three work loads are independent: issue them together, branch after (latency-bound).
    n_rows = tl.load(work_rows_ptr + item)
    slot = tl.load(work_slot_ptr + item)
    start = tl.load(work_start_ptr + item)
    rank = tl.load(ranks_ptr + slot * stride_rank_s + proj)
    if (n_rows == 0) | (rank <= 0):
        return
    m = tl.arange(0, BLOCK_M)
    m_valid = m < n_rows
    tok = tl.load(sorted_ptr + start + m, mask=m_valid, other=0).to(tl.int64)  # [M]
    r = tl.arange(0, BLOCK_R)
    r_valid = (r < rank) & (r < MAX_RANK)
    a_rows = tl.load(
        a_off_ptr + slot * stride_off_s + proj * stride_off_p + r, mask=r_valid, other=0
    ).to(tl.int64)  # [R] element offsets
    if ALIGNED:
        # Rows start on 16-byte boundaries: lets the compiler vectorize the gathered loads.
        a_rows = tl.multiple_of(a_rows, 8)
    acc = tl.zeros([BLOCK_M, BLOCK_R], tl.float32)
    k_lo = k_split * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, in_dim)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        k_valid = kk < k_hi
        x = tl.load(
            x_ptr + tok[:, None] * stride_xt + kk[None, :],
            mask=m_valid[:, None] & k_valid[None, :],
            other=0.0,
        )  # [M, K]
        a = tl.load(
            a_pool_ptr + a_rows[None, :] + kk[:, None],
            mask=r_valid[None, :] & k_valid[:, None],
            other=0.0,
        )  # [K, R] = A^T tile
        acc += mma(x, a, UPCAST)
    # Each split stores its own partial sum: no atomics, no zeroed buffer, deterministic.
    s_ptrs = (
        s_ptr + k_split * stride_s_split + tok[:, None] * stride_st + proj * stride_sp + r[None, :]
    )
    tl.store(s_ptrs, acc, mask=m_valid[:, None] & r_valid[None, :])


@triton.jit
def _expand_kernel(
    s_ptr,
    b_pool_ptr,
    b_off_ptr,
    ranks_ptr,
    scales_ptr,
    sorted_ptr,
    work_slot_ptr,
    work_start_ptr,
    work_rows_ptr,
    y_ptr,
    col0,
    col1,
    col2,
    col3,
    col4,
    num_splits,
    stride_s_split,
    stride_st,
    stride_sp,
    stride_off_s,
    stride_off_p,
    stride_rank_s,
    stride_scale_s,
    stride_yt,
    MAX_RANK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    item = tl.program_id(0)
    proj = tl.program_id(1)
    n_tile = tl.program_id(2)
    n_rows = tl.load(work_rows_ptr + item)
    slot = tl.load(work_slot_ptr + item)
    start = tl.load(work_start_ptr + item)
    rank = tl.load(ranks_ptr + slot * stride_rank_s + proj)
    scale = tl.load(scales_ptr + slot * stride_scale_s + proj)
    # Projection p owns y columns [col_p, col_{p+1}); unused cols repeat the end.
    first = tl.where(proj == 0, col0, tl.where(proj == 1, col1, tl.where(proj == 2, col2, col3)))
    last = tl.where(proj == 0, col1, tl.where(proj == 1, col2, tl.where(proj == 2, col3, col4)))
    if ALIGNED:
        first = tl.multiple_of(first, 8)
    width = last - first
    if (n_rows == 0) | (rank <= 0) | (n_tile * BLOCK_N >= width):
        return
    m = tl.arange(0, BLOCK_M)
    m_valid = m < n_rows
    tok = tl.load(sorted_ptr + start + m, mask=m_valid, other=0).to(tl.int64)  # [M]
    r = tl.arange(0, BLOCK_R)
    r_valid = (r < rank) & (r < MAX_RANK)
    b_rows = tl.load(
        b_off_ptr + slot * stride_off_s + proj * stride_off_p + r, mask=r_valid, other=0
    ).to(tl.int64)  # [R]
    if ALIGNED:
        b_rows = tl.multiple_of(b_rows, 8)
    n = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    n_valid = n < width
    y_ptrs = y_ptr + tok[:, None] * stride_yt + first + n[None, :]
    y_mask = m_valid[:, None] & n_valid[None, :]
    y = tl.load(y_ptrs, mask=y_mask, other=0.0)
    b = tl.load(
        b_pool_ptr + b_rows[:, None] + n[None, :],
        mask=r_valid[:, None] & n_valid[None, :],
        other=0.0,
    )  # [R, N] = B^T tile
    s_ptrs = s_ptr + tok[:, None] * stride_st + proj * stride_sp + r[None, :]
    s_mask = m_valid[:, None] & r_valid[None, :]
    s = tl.zeros([BLOCK_M, BLOCK_R], tl.float32)
    for split in range(num_splits):
        s += tl.load(s_ptrs + split * stride_s_split, mask=s_mask, other=0.0)  # [M, R]
    delta = mma(s.to(b_pool_ptr.dtype.element_ty), b, UPCAST) * scale  # [M, N]
    tl.store(y_ptrs, (y.to(tl.float32) + delta).to(y_ptr.dtype.element_ty), mask=y_mask)


def lora_shrink(
    x: torch.Tensor,  # [T, in_dim]
    weights: LoRAWeights,
    batch: LoRABatch,
    *,
    split_k: int | None = None,
) -> torch.Tensor:  # [K_splits, T, P, R] fp32 partial sums over in_dim chunks
    """s[:, t, p, :r].sum(0) = x[t] @ A_p^T for every projection of the group, in one launch.

    in_dim is cut into K_splits chunks so that a batch with few adapters still fills the GPU;
    lora_expand adds the partials. Only (adapter token, p, j < rank) entries are written.
    """
    checks.check_tensor("x", x, ndim=2, dtypes=checks.FLOAT_DTYPES)
    s_slots, p = check_lora_weights(weights, x.dtype, x.device)
    check_lora_batch(batch, x.shape[0], s_slots, x.device)
    t, in_dim = x.shape
    width = weights.a_offsets.shape[2]
    if split_k is None:
        # ~1024 programs (measured best on H100), chunks of at least 256 columns.
        split_k = max(1, min(triton.cdiv(1024, batch.num_work * p), in_dim // 256))
    if split_k < 1:
        raise ValueError(f"split_k: must be >= 1, got {split_k}")
    block_k = min(64, max(16, next_pow2(triton.cdiv(in_dim, split_k))))
    k_per_split = triton.cdiv(triton.cdiv(in_dim, split_k), block_k) * block_k
    split_k = max(1, triton.cdiv(in_dim, k_per_split))
    s = torch.empty((split_k, t, p, width), dtype=torch.float32, device=x.device)
    if t == 0 or width == 0:
        return s
    _shrink_kernel[(batch.num_work, p, split_k)](
        x, weights.a_pool, weights.a_offsets, weights.ranks,
        batch.sorted_tokens, batch.work_slot, batch.work_start, batch.work_rows, s,
        in_dim, k_per_split,
        x.stride(0), weights.a_offsets.stride(0), weights.a_offsets.stride(1),
        weights.ranks.stride(0), s.stride(0), s.stride(1), s.stride(2),
        MAX_RANK=width, BLOCK_M=BLOCK_M, BLOCK_R=max(16, next_pow2(width)), BLOCK_K=block_k,
        UPCAST=checks.upcast_dot(x.dtype), ALIGNED=in_dim % ALIGN == 0,
        num_warps=4,
    )  # fmt: skip
    return s


def lora_expand(
    y: torch.Tensor,  # [T, >= sum(out_dims)], updated in place
    s: torch.Tensor,  # [K_splits, T, P, R] fp32 from lora_shrink
    weights: LoRAWeights,
    batch: LoRABatch,
    out_dims: Sequence[int],  # P widths: projection p owns the next out_dims[p] columns of y
    *,
    block_n: int | None = None,
) -> None:
    """y[t, cols_p] += (s[:, t, p, :r].sum(0) @ B_p^T) * scale for every projection, one launch."""
    checks.check_tensor("y", y, ndim=2, dtypes=checks.FLOAT_DTYPES)
    s_slots, p = check_lora_weights(weights, weights.b_pool.dtype, y.device)
    check_lora_batch(batch, y.shape[0], s_slots, y.device)
    width = weights.a_offsets.shape[2]
    checks.check_tensor("s", s, ndim=4, dtypes=(torch.float32,), device=y.device)
    if s.shape[1:] != (y.shape[0], p, width) or s.shape[0] < 1:
        raise ValueError(
            f"s: shape must be (splits, {y.shape[0]}, {p}, {width}), got {tuple(s.shape)}"
        )
    if len(out_dims) != p or any(d < 0 for d in out_dims):
        raise ValueError(f"out_dims: expected {p} non-negative widths, got {list(out_dims)}")
    if sum(out_dims) > y.shape[1]:
        raise ValueError(f"y: {y.shape[1]} columns cannot hold out_dims {list(out_dims)}")
    if block_n is None:
        block_n = 256 if max(out_dims) >= 2048 else 128  # measured on H100
    if block_n < 16 or block_n & (block_n - 1):
        raise ValueError(f"block_n: must be a power of two >= 16, got {block_n}")
    if y.shape[0] == 0 or width == 0:
        return
    cols = [0]
    for d in out_dims:
        cols.append(cols[-1] + d)
    cols += [cols[-1]] * (MAX_PROJECTIONS + 1 - len(cols))
    _expand_kernel[(batch.num_work, p, triton.cdiv(max(out_dims), block_n))](
        s, weights.b_pool, weights.b_offsets, weights.ranks, weights.scales,
        batch.sorted_tokens, batch.work_slot, batch.work_start, batch.work_rows, y,
        *cols, s.shape[0],
        s.stride(0), s.stride(1), s.stride(2),
        weights.b_offsets.stride(0), weights.b_offsets.stride(1),
        weights.ranks.stride(0), weights.scales.stride(0), y.stride(0),
        MAX_RANK=width, BLOCK_M=BLOCK_M, BLOCK_R=max(16, next_pow2(width)), BLOCK_N=block_n,
        UPCAST=checks.upcast_dot(weights.b_pool.dtype),
        ALIGNED=all(d % ALIGN == 0 for d in out_dims),
        num_warps=4,
    )  # fmt: skip


def add_lora(
    y: torch.Tensor,  # [T, >= sum(out_dims)], updated in place
    x: torch.Tensor,  # [T, in_dim]
    weights: LoRAWeights,
    batch: LoRABatch,
    out_dims: Sequence[int],
) -> None:
    """Shrink then expand: the whole LoRA delta of one projection group."""
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y: {y.shape[0]} rows must equal x's {x.shape[0]}")
    lora_expand(y, lora_shrink(x, weights, batch), weights, batch, out_dims)
