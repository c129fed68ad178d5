"""The one seam the model calls: picks the Triton kernel on CUDA and the torch twin elsewhere.

Callers pass host-side ints (`max_query_len`, `max_seq_len`) so the dispatch never syncs the GPU.
FLEETLM_KERNELS=torch forces the twins everywhere; FLEETLM_KERNELS=triton forces the kernels
(on CPU that needs TRITON_INTERPRET=1, which is how the tests run them). For paged attention
"the twin" is the vectorized `torch_paged.paged_attention_torch` (the per-request loop in
`reference` is the definition both are tested against, too slow to serve with). Both paths
check their inputs the same way and raise ValueError naming the bad argument.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from kernels import checks, reference, torch_paged
from kernels.lora_meta import (
    LoRABatch,
    LoRAWeights,
    check_lora_batch,
    check_lora_weights,
    prepare_lora_batch,
    validate_lora_tables,
)

__all__ = [
    "LoRABatch",
    "LoRAWeights",
    "add_lora",
    "paged_attention",
    "prepare_lora_batch",
    "rms_norm",
    "use_triton",
    "validate_lora_tables",
    "write_kv",
]
BACKENDS = ("auto", "torch", "triton")


def use_triton(t: torch.Tensor) -> bool:
    """Triton for CUDA tensors unless FLEETLM_KERNELS says otherwise."""
    choice = os.environ.get("FLEETLM_KERNELS", "auto")
    if choice not in BACKENDS:
        raise ValueError(f"FLEETLM_KERNELS: must be one of {', '.join(BACKENDS)}, got {choice!r}")
    if choice == "auto":
        return t.is_cuda
    return choice == "triton"


def write_kv(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    k_cache: torch.Tensor,  # [N, bs, Hkv, D]
    v_cache: torch.Tensor,  # [N, bs, Hkv, D]
    slot_mapping: torch.Tensor,  # [T] int
) -> None:
    """Scatters K/V rows into their slots; a negative slot is padding and is skipped."""
    if use_triton(key):
        from kernels.kv_write import write_kv as write_kv_triton

        write_kv_triton(key, value, k_cache, v_cache, slot_mapping)
        return
    checks.check_write_kv(key, value, k_cache, v_cache, slot_mapping)
    capacity = k_cache.shape[0] * k_cache.shape[1]
    if (slot_mapping >= capacity).any():
        raise ValueError(f"slot_mapping: slots must be < the cache's {capacity} slots")
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
    num_splits: int | None = None,
) -> torch.Tensor:  # [T, Hq, D]
    """Causal attention of each request's new rows over its paged context (reference semantics).

    A pure-decode batch (one row per request) takes the split-K decode kernel; anything else the
    varlen prefill kernel. `num_splits` fixes the decode split count (CUDA graphs need a fixed
    launch shape); None picks one from `max_seq_len` and the GPU's SM count.
    """
    if not use_triton(query):
        checks.check_prefill(
            query, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale, kernel=False
        )
        checks.check_attention_values(k_cache, block_tables, query_start_loc, seq_lens)
        # The vectorized twin (kernels/torch_paged.py); reference.paged_attention_ref stays the
        # definition the tests hold both it and the Triton kernels to.
        return torch_paged.paged_attention_torch(
            query, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale
        )
    # max_query_len <= 1 and T == B: every request has exactly one row, in order.
    if max_query_len <= 1 and query.shape[0] == block_tables.shape[0]:
        from kernels.attention_decode import paged_attention_decode

        return paged_attention_decode(
            query, k_cache, v_cache, block_tables, seq_lens, scale,
            max_seq_len=max_seq_len, num_splits=num_splits,
        )  # fmt: skip
    from kernels.attention_prefill import paged_attention_prefill

    return paged_attention_prefill(
        query, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale,
        max_query_len=max_query_len,
    )  # fmt: skip


def rms_norm(
    x: torch.Tensor,  # [T, H]
    weight: torch.Tensor,  # [H]
    eps: float,
    residual: torch.Tensor | None = None,  # [T, H]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Returns (norm(x + residual) * weight, x + residual), fp32 math inside."""
    if use_triton(x):
        from kernels.rms_norm import rms_norm as rms_norm_triton

        return rms_norm_triton(x, weight, eps, residual)
    checks.check_rms_norm(x, weight, eps, residual)
    return reference.rms_norm_ref(x, weight, eps, residual)


def add_lora(
    y: torch.Tensor,  # [T, >= sum(out_dims)], updated in place
    x: torch.Tensor,  # [T, in_dim]
    weights: LoRAWeights,
    batch: LoRABatch,
    out_dims: Sequence[int],  # projection p owns the next out_dims[p] columns of y
) -> None:
    """y += the LoRA delta of one projection group (layout and semantics: kernels.lora_meta)."""
    if use_triton(x):
        from kernels.lora import add_lora as add_lora_triton

        add_lora_triton(y, x, weights, batch, out_dims)
        return
    checks.check_tensor("x", x, ndim=2, dtypes=checks.FLOAT_DTYPES)
    checks.check_tensor("y", y, ndim=2, dtypes=checks.FLOAT_DTYPES, device=x.device)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y: {y.shape[0]} rows must equal x's {x.shape[0]}")
    if sum(out_dims) > y.shape[1]:
        raise ValueError(f"y: {y.shape[1]} columns cannot hold out_dims {list(out_dims)}")
    num_slots, _ = check_lora_weights(weights, x.dtype, x.device)
    check_lora_batch(batch, x.shape[0], num_slots, x.device)
    validate_lora_tables(weights, x.shape[1], out_dims)
    slots = batch.token_slots
    if ((slots < -1) | (slots >= num_slots)).any():
        raise ValueError(f"token_slots: must be -1 (base only) or in [0, {num_slots})")
    reference.lora_ref(
        y, x, weights.a_pool, weights.a_offsets, weights.b_pool, weights.b_offsets,
        weights.ranks, weights.scales, batch.token_slots, list(out_dims),
    )  # fmt: skip
