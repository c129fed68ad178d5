"""The tensor-parallel pass: the model knows nothing of tensor parallelism; this pass shards it.

For rank r of N, Megatron-style:
- `qkv_proj` (column-parallel) keeps the rank's q heads and kv heads: rows
  [q_r | k_r | v_r] of the fused weight, so attention runs on Hq/N query and Hkv/N KV heads.
- `gate_up_proj` (column-parallel) keeps the rank's I/N gate rows and I/N up rows.
- `o_proj` and `down_proj` become row-parallel: each rank multiplies its input columns, the
  partial sums are all-reduced, then the (replicated) bias is added once.
- Embeddings, norms and `lm_head` stay replicated: the vocab of the models we serve is small
  next to the layers, and a replicated head lets rank 0 sample without a gather.

The pass slices whatever tensors the model holds: real weights (gpt-fast style, shard a loaded
model) or meta tensors (shape only, before `actors.shard.loader` reads each rank's slices).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from actors.models.attention import Attention
from actors.models.config import ModelArchConfig
from actors.models.layers import GatedMLP
from actors.models.llama import LlamaForCausalLM
from actors.shard.context import ShardContext


class RowParallelLinear(nn.Module):
    """y = all_reduce(x_r @ W_r^T) + b: input features split over the shards."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, ctx: ShardContext) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)  # [out, in / N]
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)  # [out]
        self.ctx = ctx

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, in / N] -> [T, out]
        out = self.ctx.all_reduce(F.linear(x, self.weight))
        return out if self.bias is None else out + self.bias


def check_tensor_parallel(arch: ModelArchConfig, tensor_parallel_size: int) -> None:
    """Raises ValueError naming tensor_parallel_size when the model cannot split N ways."""
    n = tensor_parallel_size
    if n < 1:
        raise ValueError(f"tensor_parallel_size: must be >= 1, got {n}")
    for what, count in (
        ("num_heads", arch.num_heads),
        ("num_kv_heads", arch.num_kv_heads),
        ("intermediate_size", arch.intermediate_size),
    ):
        if count % n:
            raise ValueError(
                f"tensor_parallel_size: {n} does not divide the model's {what} ({count}); "
                f"pick a divisor of {count}"
            )


def _rows(t: torch.Tensor, start: int, length: int) -> torch.Tensor:
    return t.narrow(0, start, length)


def column_slices(arch: ModelArchConfig, ctx: ShardContext) -> dict[str, tuple[int, int, int]]:
    """Fused shard id -> (row offset in the full fused tensor, rows per rank, offset per rank)."""
    n, r, d, i = ctx.world_size, ctx.rank, arch.head_dim, arch.intermediate_size
    q, kv = arch.num_heads // n * d, arch.num_kv_heads // n * d
    return {
        "q": (r * q, q, 0),
        "k": (arch.q_size + r * kv, kv, q),
        "v": (arch.q_size + arch.kv_size + r * kv, kv, q + kv),
        "gate": (r * i // n, i // n, 0),
        "up": (i + r * i // n, i // n, i // n),
    }


def _column_parallel(
    linear: nn.Linear, parts: list[tuple[int, int, int]], in_features: int
) -> nn.Linear:
    """A plain nn.Linear holding the rows `parts` ((full offset, rows, _) each), concatenated."""
    rows = sum(p[1] for p in parts)
    out = nn.Linear(in_features, rows, bias=linear.bias is not None, device=linear.weight.device)
    out = out.to(linear.weight.dtype).requires_grad_(False)
    with torch.no_grad():
        out.weight.copy_(torch.cat([_rows(linear.weight, s, n) for s, n, _ in parts]))
        if linear.bias is not None and out.bias is not None:
            out.bias.copy_(torch.cat([_rows(linear.bias, s, n) for s, n, _ in parts]))
    return out


def _row_parallel(linear: nn.Linear, ctx: ShardContext) -> RowParallelLinear:
    cols = linear.in_features // ctx.world_size
    weight = linear.weight.detach().narrow(1, ctx.rank * cols, cols).contiguous()  # [out, in/N]
    bias = None if linear.bias is None else linear.bias.detach()
    return RowParallelLinear(weight, bias, ctx)


def _shard_attention(attn: Attention, arch: ModelArchConfig, ctx: ShardContext) -> None:
    s = column_slices(arch, ctx)
    attn.qkv_proj = _column_parallel(attn.qkv_proj, [s["q"], s["k"], s["v"]], arch.hidden_size)
    attn.o_proj = _row_parallel(attn.o_proj, ctx)  # type: ignore[assignment]
    attn.num_heads = arch.num_heads // ctx.world_size
    attn.num_kv_heads = arch.num_kv_heads // ctx.world_size
    attn.q_size = attn.num_heads * arch.head_dim
    attn.kv_size = attn.num_kv_heads * arch.head_dim


def _shard_mlp(mlp: GatedMLP, arch: ModelArchConfig, ctx: ShardContext) -> None:
    s = column_slices(arch, ctx)
    mlp.gate_up_proj = _column_parallel(mlp.gate_up_proj, [s["gate"], s["up"]], arch.hidden_size)
    mlp.down_proj = _row_parallel(mlp.down_proj, ctx)  # type: ignore[assignment]
    mlp.intermediate_size = arch.intermediate_size // ctx.world_size


def shard_model(model: LlamaForCausalLM, ctx: ShardContext) -> LlamaForCausalLM:
    """Shards `model` in place for rank `ctx.rank` of `ctx.world_size`; returns it."""
    arch = model.config
    check_tensor_parallel(arch, ctx.world_size)
    if ctx.world_size == 1:
        return model
    for layer in model.model.layers:
        _shard_attention(layer.self_attn, arch, ctx)
        _shard_mlp(layer.mlp, arch, ctx)
    return model
