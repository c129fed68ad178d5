"""KV write: scatter each new token's K and V into its cache slot (slot = block * bs + offset).

One program per token copies its [Hkv, D] K and V rows. A negative slot is padding and is
skipped; so is a slot past the cache (it would write out of bounds). Rotary stays in the model:
fusing it here saves one read of K per layer, small next to the attention reads.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import checks
from kernels.triton_utils import next_pow2


@triton.jit
def _write_kv_kernel(
    key_ptr,
    value_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slots_ptr,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_cn,
    stride_cb,
    stride_ch,
    num_slots,
    KV_BLOCK: tl.constexpr,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK: tl.constexpr,
):
    token = tl.program_id(0)
    slot = tl.load(slots_ptr + token).to(tl.int64)
    if (slot < 0) | (slot >= num_slots):
        return
    i = tl.arange(0, BLOCK)  # flat (head, dim) index
    valid = i < NUM_HEADS * HEAD_DIM
    h = i // HEAD_DIM
    d = i % HEAD_DIM
    dst = (slot // KV_BLOCK) * stride_cn + (slot % KV_BLOCK) * stride_cb + h * stride_ch + d
    k = tl.load(key_ptr + token.to(tl.int64) * stride_kt + h * stride_kh + d, mask=valid)
    v = tl.load(value_ptr + token.to(tl.int64) * stride_vt + h * stride_vh + d, mask=valid)
    tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=valid)
    tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=valid)


def write_kv(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    k_cache: torch.Tensor,  # [N, bs, Hkv, D]
    v_cache: torch.Tensor,  # [N, bs, Hkv, D]
    slot_mapping: torch.Tensor,  # [T] int32/int64; negative = skip
) -> None:
    """Copies key[t], value[t] into the caches at slot_mapping[t]; K/V are cast to the cache dtype.

    key/value may be strided views (e.g. slices of a fused qkv output) as long as the last dim
    has stride 1. The caches keep the engine's layout with the same shape.
    """
    checks.check_write_kv(key, value, k_cache, v_cache, slot_mapping)
    t, hkv, d = key.shape
    if t == 0:
        return
    n, bs = k_cache.shape[:2]
    _write_kv_kernel[(t,)](
        key, value, k_cache, v_cache, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        n * bs,
        KV_BLOCK=bs, NUM_HEADS=hkv, HEAD_DIM=d, BLOCK=next_pow2(hkv * d),
        num_warps=4,
    )  # fmt: skip
