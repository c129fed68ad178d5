"""Small jit helpers shared by the kernels."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def mma(a, b, UPCAST: tl.constexpr):
    """tl.dot with fp32 accumulation; fp32 operands use exact IEEE math (no TF32 rounding).

    UPCAST feeds bf16 operands as fp32: the CPU interpreter cannot multiply bf16 (numpy has no
    bf16 type), and on the GPU the flag is never set.
    """
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif a.dtype == tl.float32:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(1, n))
