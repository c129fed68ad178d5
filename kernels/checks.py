"""Launcher input checks: every Triton launcher validates before it launches.

A kernel trusts its pointers and strides, so a wrong shape or a non-unit stride would read out of
bounds or silently mix rows. These helpers turn that into a ValueError naming the argument. They
look at metadata only (shape, dtype, device, strides) so they never sync the GPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)


def check_tensor(
    name: str,
    t: object,
    *,
    ndim: int,
    dtypes: Sequence[torch.dtype],
    device: torch.device | None = None,
    inner_contiguous: bool = True,
) -> torch.Tensor:
    """Checks type, rank, dtype, device and (optionally) a unit stride on the last dim."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dims, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(f"{name}: dtype must be one of {allowed}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: must be on {device}, got {t.device}")
    if inner_contiguous and ndim > 0 and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name}: last dim must have stride 1, got strides {t.stride()}")
    return t


def check_dim(name: str, t: torch.Tensor, dim: int, expected: int, what: str) -> None:
    if t.shape[dim] != expected:
        raise ValueError(
            f"{name}: dim {dim} must equal {what} ({expected}), got shape {tuple(t.shape)}"
        )


def check_contiguous(name: str, t: torch.Tensor) -> None:
    if not t.is_contiguous():
        raise ValueError(f"{name}: must be contiguous, got strides {t.stride()}")


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name}: must be > 0, got {value}")


def check_head_dim(name: str, head_dim: int) -> None:
    if head_dim < 16 or head_dim > 256 or head_dim & (head_dim - 1):
        raise ValueError(f"{name}: head_dim must be a power of two in [16, 256], got {head_dim}")


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1 (the CPU interpreter the tests use)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def upcast_dot(dtype: torch.dtype) -> bool:
    """The interpreter's tl.dot misreads bf16 (numpy has no bf16), so it gets fp32 operands."""
    return interpreting() and dtype == torch.bfloat16


def check_paged_kv(
    k_cache: torch.Tensor, v_cache: torch.Tensor, dtype: torch.dtype, device: torch.device
) -> None:
    """K and V caches: [num_blocks, block_size, num_kv_heads, head_dim], the query's dtype."""
    check_tensor("k_cache", k_cache, ndim=4, dtypes=(dtype,), device=device)
    check_tensor("v_cache", v_cache, ndim=4, dtypes=(dtype,), device=device)
    if k_cache.shape != v_cache.shape:
        raise ValueError(
            f"v_cache: shape {tuple(v_cache.shape)} must equal k_cache {tuple(k_cache.shape)}"
        )
    bs = k_cache.shape[1]
    if bs < 1 or bs & (bs - 1):
        raise ValueError(f"k_cache: block_size (dim 1) must be a power of two, got {bs}")


def _check_query_and_kv(
    query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, kernel: bool
) -> None:
    """Query [*, Hq, D] against the paged K/V caches: dtype, device, head_dim and GQA grouping."""
    check_tensor("query", query, ndim=3, dtypes=FLOAT_DTYPES)
    check_paged_kv(k_cache, v_cache, query.dtype, query.device)
    hq, d = query.shape[1], query.shape[2]
    hkv = k_cache.shape[2]
    if kernel:  # the torch twin takes any head_dim
        check_head_dim("query", d)
    check_dim("k_cache", k_cache, 3, d, "query head_dim")
    if hq % hkv:
        raise ValueError(f"query: {hq} heads is not a multiple of k_cache's {hkv} KV heads")


def check_decode(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    *,
    kernel: bool = True,
) -> None:
    _check_query_and_kv(query, k_cache, v_cache, kernel)
    b = query.shape[0]
    check_tensor("block_tables", block_tables, ndim=2, dtypes=INDEX_DTYPES, device=query.device)
    check_dim("block_tables", block_tables, 0, b, "the batch size")
    check_tensor("seq_lens", seq_lens, ndim=1, dtypes=INDEX_DTYPES, device=query.device)
    check_dim("seq_lens", seq_lens, 0, b, "the batch size")
    check_contiguous("seq_lens", seq_lens)
    check_positive("scale", scale)


def check_prefill(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    *,
    kernel: bool = True,
) -> None:
    _check_query_and_kv(query, k_cache, v_cache, kernel)
    dev = query.device
    check_tensor("block_tables", block_tables, ndim=2, dtypes=INDEX_DTYPES, device=dev)
    b = block_tables.shape[0]
    check_tensor("query_start_loc", query_start_loc, ndim=1, dtypes=INDEX_DTYPES, device=dev)
    check_dim("query_start_loc", query_start_loc, 0, b + 1, "batch size + 1")
    check_contiguous("query_start_loc", query_start_loc)
    check_tensor("seq_lens", seq_lens, ndim=1, dtypes=INDEX_DTYPES, device=dev)
    check_dim("seq_lens", seq_lens, 0, b, "the batch size")
    check_contiguous("seq_lens", seq_lens)
    check_positive("scale", scale)


def check_write_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    check_tensor("key", key, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor("value", value, ndim=3, dtypes=FLOAT_DTYPES, device=key.device)
    if value.shape != key.shape:
        raise ValueError(f"value: shape {tuple(value.shape)} must equal key {tuple(key.shape)}")
    check_tensor("k_cache", k_cache, ndim=4, dtypes=FLOAT_DTYPES, device=key.device)
    check_tensor("v_cache", v_cache, ndim=4, dtypes=(k_cache.dtype,), device=key.device)
    if v_cache.shape != k_cache.shape or v_cache.stride() != k_cache.stride():
        raise ValueError("v_cache: shape and strides must equal k_cache's")
    t, hkv, d = key.shape
    check_dim("k_cache", k_cache, 2, hkv, "key's KV heads")
    check_dim("k_cache", k_cache, 3, d, "key's head_dim")
    check_tensor("slot_mapping", slot_mapping, ndim=1, dtypes=INDEX_DTYPES, device=key.device)
    check_dim("slot_mapping", slot_mapping, 0, t, "the number of key rows")
    check_contiguous("slot_mapping", slot_mapping)


def check_rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None
) -> None:
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    check_tensor("weight", weight, ndim=1, dtypes=FLOAT_DTYPES, device=x.device)
    h = x.shape[1]
    check_dim("weight", weight, 0, h, "x's hidden size")
    check_positive("eps", eps)
    if h > 65536:
        raise ValueError(f"x: hidden size {h} exceeds the one-tile limit of 65536")
    if residual is not None:
        check_tensor("residual", residual, ndim=2, dtypes=(x.dtype,), device=x.device)
        if residual.shape != x.shape:
            raise ValueError(
                f"residual: shape {tuple(residual.shape)} must equal x {tuple(x.shape)}"
            )


def check_attention_values(
    k_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
) -> None:
    """Value checks for host tensors (the CPU path): costs a sync, so never used on the GPU."""
    q_lens = query_start_loc[1:] - query_start_loc[:-1]  # [B]
    if (q_lens < 0).any():
        raise ValueError("query_start_loc: must be non-decreasing")
    if (seq_lens < q_lens).any():
        raise ValueError("seq_lens: every seq_len must be >= its number of query rows")
    n, bs = k_cache.shape[:2]
    if (seq_lens > block_tables.shape[1] * bs).any():
        raise ValueError(f"seq_lens: exceed block_tables' capacity of {block_tables.shape[1] * bs}")
    used = torch.arange(block_tables.shape[1], device=seq_lens.device) * bs < seq_lens[:, None]
    if ((block_tables < 0) | (block_tables >= n))[used].any():
        raise ValueError(f"block_tables: a block id inside a sequence is outside [0, {n})")
