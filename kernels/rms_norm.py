"""Fused RMSNorm with an optional residual add, one program per row (fp32 math inside)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import checks
from kernels.triton_utils import next_pow2


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    residual_ptr,
    weight_ptr,
    out_ptr,
    residual_out_ptr,
    stride_x,
    stride_r,
    stride_o,
    stride_ro,
    hidden,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    valid = cols < hidden
    x = tl.load(x_ptr + row * stride_x + cols, mask=valid, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + row * stride_r + cols, mask=valid, other=0.0)
        # Round the sum to the input dtype first, as the twin (and HF) do.
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(residual_out_ptr + row * stride_ro + cols, x, mask=valid)
    xf = x.to(tl.float32)
    rstd = tl.math.rsqrt(tl.sum(xf * xf, 0) / hidden + eps)
    normed = (xf * rstd).to(x_ptr.dtype.element_ty)
    w = tl.load(weight_ptr + cols, mask=valid, other=0.0)
    out = w.to(tl.float32) * normed.to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, out.to(out_ptr.dtype.element_ty), mask=valid)


def rms_norm(
    x: torch.Tensor,  # [T, H]
    weight: torch.Tensor,  # [H]
    eps: float,
    residual: torch.Tensor | None = None,  # [T, H]
) -> tuple[torch.Tensor, torch.Tensor | None]:  # ([T, H], [T, H] | None)
    """Returns (norm(x + residual) * weight, x + residual), like reference.rms_norm_ref.

    The output dtype is torch's promotion of weight and x; the new residual has x's dtype.
    Inputs are not modified.
    """
    checks.check_rms_norm(x, weight, eps, residual)
    t, h = x.shape
    out = torch.empty((t, h), dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    new_residual = torch.empty_like(x) if residual is not None else None
    if t == 0:
        return out, new_residual
    block = next_pow2(h)
    _rms_norm_kernel[(t,)](
        x, residual if residual is not None else x, weight, out,
        new_residual if new_residual is not None else out,
        x.stride(0), residual.stride(0) if residual is not None else 0, out.stride(0),
        new_residual.stride(0) if new_residual is not None else 0,
        h, eps,
        HAS_RESIDUAL=residual is not None, BLOCK=block,
        num_warps=min(16, max(1, block // 256)),
    )  # fmt: skip
    return out, new_residual
