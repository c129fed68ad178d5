"""KV write and fused RMSNorm kernels against their twins."""

from __future__ import annotations

import pytest
import torch

from kernels import ops, reference
from kernels.kv_write import write_kv
from kernels.rms_norm import rms_norm


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_write_kv_matches_twin_and_skips_padding(dtype):
    gen = torch.Generator().manual_seed(0)
    n, bs, hkv, d = 6, 4, 3, 8  # Hkv * D = 24: not a power of two
    # key/value as strided views of a fused qkv tensor, like the model produces.
    qkv = torch.randn(7, 5, d, generator=gen).to(dtype)
    key, value = qkv[:, 1:4], qkv[:, 2:5]
    slots = torch.tensor([0, -1, 23, 5, 6, -7, 13], dtype=torch.int64)
    caches = [torch.randn(n, bs, hkv, d, generator=gen).to(dtype) for _ in range(2)]
    k_kernel, v_kernel = (c.clone() for c in caches)
    k_twin, v_twin = (c.clone() for c in caches)
    write_kv(key, value, k_kernel, v_kernel, slots)
    reference.write_kv_ref(key, value, k_twin, v_twin, slots)
    assert torch.equal(k_kernel, k_twin) and torch.equal(v_kernel, v_twin)
    touched = torch.zeros(n * bs, dtype=torch.bool)
    touched[slots[slots >= 0]] = True
    untouched = ~touched.view(n, bs)
    assert torch.equal(k_kernel[untouched], caches[0][untouched])


def test_write_kv_casts_to_cache_dtype():
    key = torch.randn(2, 1, 16)
    k_cache = torch.zeros(2, 2, 1, 16, dtype=torch.float16)
    v_cache = torch.zeros_like(k_cache)
    write_kv(key, key, k_cache, v_cache, torch.tensor([3, 0], dtype=torch.int32))
    assert torch.equal(k_cache.view(4, 1, 16)[3], key[0].half())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_twin(dtype, with_residual):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 96, generator=gen).to(dtype)  # 96: padded to a 128-wide tile
    weight = torch.randn(96, generator=gen).to(dtype)
    residual = torch.randn(5, 96, generator=gen).to(dtype) if with_residual else None
    out, new_res = rms_norm(x, weight, 1e-5, residual)
    ref_out, ref_res = reference.rms_norm_ref(x, weight, 1e-5, residual)
    # fp16/fp32 round like torch; the interpreter truncates bf16, so allow one bf16 step there.
    atol = 0.0 if dtype != torch.bfloat16 else 2**-7 * 8
    torch.testing.assert_close(out, ref_out, atol=atol, rtol=2**-7 if atol else 0)
    if with_residual:
        torch.testing.assert_close(new_res, ref_res, atol=atol, rtol=2**-7 if atol else 0)
    else:
        assert new_res is None


def test_rms_norm_fp32_weight_promotes_output(monkeypatch):
    x = torch.randn(3, 32).half()
    weight = torch.rand(32)
    monkeypatch.setenv("FLEETLM_KERNELS", "triton")
    out, _ = ops.rms_norm(x, weight, 1e-6)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference.rms_norm_ref(x, weight, 1e-6)[0])
