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
