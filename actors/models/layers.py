"""Small building blocks shared by the Llama-family decoders."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels import ops


class RMSNorm(nn.Module):
    """RMSNorm through kernels.ops (fused residual add when `residual` is given)."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(
        self,
        x: torch.Tensor,  # [T, H]
        residual: torch.Tensor | None = None,  # [T, H]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return ops.rms_norm(x, self.weight, self.eps, residual)


class GatedMLP(nn.Module):
    """SiLU-gated MLP; gate and up share one column-parallel GEMM, down is row-parallel."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool) -> None:
        super().__init__()
        self.intermediate_size = intermediate_size
        self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, H] -> [T, H]
        gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)  # [T, I] each
        return self.down_proj(F.silu(gate) * up)
