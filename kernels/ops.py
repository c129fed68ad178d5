"""The one seam the model calls: picks the Triton kernel on CUDA and the torch twin elsewhere.

Callers pass host-side ints (`max_query_len`, `max_seq_len`) so the dispatch never syncs the GPU.
"""

from __future__ import annotations

import torch

from kernels import reference


def write_kv(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    k_cache: torch.Tensor,  # [N, bs, Hkv, D]
    v_cache: torch.Tensor,  # [N, bs, Hkv, D]
    slot_mapping: torch.Tensor,  # [T] int
) -> None:
    reference.write_kv_ref(key, value, k_cache, v_cache, slot_mapping)


def paged_attention(
    query: torch.Tensor,  # [T, Hq, D]
    k_cache: torch.Tensor,  # [N, bs, Hkv, D]
    v_cache: torch.Tensor,  # [N, bs, Hkv, D]
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    query_start_loc: torch.Tensor,  # [B + 1] int32
    seq_lens: torch.Tensor,  # [B] int32
    scale: float,
    *,
    max_query_len: int,
    max_seq_len: int,
) -> torch.Tensor:  # [T, Hq, D]
    del max_query_len, max_seq_len  # used by the GPU kernels to pick a launch shape
    return reference.paged_attention_ref(
        query, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale
    )


def rms_norm(
    x: torch.Tensor,  # [T, H]
    weight: torch.Tensor,  # [H]
    eps: float,
    residual: torch.Tensor | None = None,  # [T, H]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    return reference.rms_norm_ref(x, weight, eps, residual)
