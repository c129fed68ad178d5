"""Paged self-attention over the packed ("varlen") batch, through the kernels.ops seam.

The batch is the query tokens of all scheduled chunks concatenated: chunk i owns rows
`query_start_loc[i]:query_start_loc[i + 1]`, the last q_len_i positions of a context of
`seq_lens[i]` tokens whose KV lives in the blocks listed in `block_tables[i]`. Each layer first
writes the new tokens' K/V into the cache, then attends over the whole cached context, so a
prefill chunk, a decode step and a chunk that continues a cached prefix are the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from actors.models.config import ModelArchConfig
from actors.models.layers import RMSNorm
from actors.models.rope import apply_rope
from kernels import ops


@dataclass(frozen=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] int64, cache slot (block * block_size + offset) per token
    block_tables: torch.Tensor  # [B, max_blocks] int32
    query_start_loc: torch.Tensor  # [B + 1] int32
    seq_lens: torch.Tensor  # [B] int32, context length after this step
    max_query_len: int  # host ints so kernel dispatch never syncs the device
    max_seq_len: int


KVCache = tuple[torch.Tensor, torch.Tensor]  # K, V: each [num_blocks, block_size, Hkv, D]


class Attention(nn.Module):
    """q/k/v share one column-parallel GEMM (qkv_proj); o_proj is the row-parallel one.

    A tensor-parallel pass shards qkv_proj by heads (the loader knows each of q, k, v's rows)
    and o_proj by input columns; nothing here assumes the full head count beyond the shapes.
    """

    def __init__(self, cfg: ModelArchConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        self.q_size = cfg.q_size
        self.kv_size = cfg.kv_size
        self.scale = cfg.head_dim**-0.5
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, cfg.qkv_bias)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, cfg.o_bias)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None

    def forward(
        self,
        hidden: torch.Tensor,  # [T, H]
        cos_sin: tuple[torch.Tensor, torch.Tensor],  # each [T, 1, D]
        meta: AttentionMetadata,
        kv_cache: KVCache,
    ) -> torch.Tensor:  # [T, H]
        t = hidden.shape[0]
        qkv = self.qkv_proj(hidden)  # [T, (Hq + 2 Hkv) D]
        v = qkv[:, self.q_size + self.kv_size :].view(t, self.num_kv_heads, self.head_dim)
        cos, sin = cos_sin
        if self.q_norm is None or self.k_norm is None:
            # q and k sit side by side in each row: one RoPE call covers both (fewer launches).
            qk = qkv[:, : self.q_size + self.kv_size].view(t, -1, self.head_dim)  # [T, Hq+Hkv, D]
            q, k = apply_rope(qk, cos, sin).split([self.num_heads, self.num_kv_heads], dim=1)
        else:
            q = qkv[:, : self.q_size].reshape(-1, self.head_dim)  # [T * Hq, D]
            k = qkv[:, self.q_size : self.q_size + self.kv_size].reshape(-1, self.head_dim)
            q = apply_rope(self.q_norm(q)[0].view(t, self.num_heads, self.head_dim), cos, sin)
            k = apply_rope(self.k_norm(k)[0].view(t, self.num_kv_heads, self.head_dim), cos, sin)
        k_cache, v_cache = kv_cache
        ops.write_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        out = ops.paged_attention(
            q,
            k_cache,
            v_cache,
            meta.block_tables,
            meta.query_start_loc,
            meta.seq_lens,
            self.scale,
            max_query_len=meta.max_query_len,
            max_seq_len=meta.max_seq_len,
        )  # [T, Hq, D]
        return self.o_proj(out.reshape(t, self.q_size))
