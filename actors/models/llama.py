"""The Llama-family decoder (Llama 2/3.x, Mistral, Qwen2/2.5, Qwen3) over a paged KV cache.

One class covers the family; ModelArchConfig's switches select the differences (qkv bias for
Qwen2, per-head q/k RMSNorm for Qwen3, head_dim from the config, tied embeddings). Parameter
names follow Hugging Face's, except that q/k/v and gate/up are fused (`qkv_proj`,
`gate_up_proj`); `stacked_params()` tells the loader where each original tensor lands.
"""

from __future__ import annotations

import torch
from torch import nn

from actors.models.attention import Attention, AttentionMetadata, KVCache
from actors.models.config import ModelArchConfig
from actors.models.layers import GatedMLP, RMSNorm
from actors.models.rope import RotaryEmbedding

# (checkpoint name fragment, fused parameter fragment, shard id)
StackedParam = tuple[str, str, str]


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelArchConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self,
        hidden: torch.Tensor,  # [T, H]
        residual: torch.Tensor | None,  # [T, H]; None before the first layer
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
        kv_cache: KVCache,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The residual stream is carried separately so each norm can fuse the add.
        if residual is None:
            residual = hidden
            hidden, _ = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(hidden, cos_sin, meta, kv_cache)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelArchConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(cfg.rope, cfg.head_dim)

    def forward(
        self,
        input_ids: torch.Tensor,  # [T]
        positions: torch.Tensor,  # [T]
        meta: AttentionMetadata,
        kv_caches: list[KVCache],  # one (K, V) per layer
    ) -> torch.Tensor:  # [T, H]
        hidden = self.embed_tokens(input_ids)  # [T, H]
        cos_sin = self.rotary.cos_sin(positions, hidden.dtype)  # shared by every layer
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden, residual = layer(hidden, residual, cos_sin, meta, kv_cache)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelArchConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Shares the embedding with the LM head when the config ties them (call after to_empty)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,  # [T]
        positions: torch.Tensor,  # [T]
        meta: AttentionMetadata,
        kv_caches: list[KVCache],
    ) -> torch.Tensor:  # [T, H] final hidden states; logits only for the rows that sample
        return self.model(input_ids, positions, meta, kv_caches)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [N, H] -> [N, V] fp32
        return self.lm_head(hidden).float()

    @staticmethod
    def stacked_params() -> list[StackedParam]:
        return [
            (".q_proj.", ".qkv_proj.", "q"),
            (".k_proj.", ".qkv_proj.", "k"),
            (".v_proj.", ".qkv_proj.", "v"),
            (".gate_proj.", ".gate_up_proj.", "gate"),
            (".up_proj.", ".gate_up_proj.", "up"),
        ]

    def shard_rows(self, shard_id: str) -> tuple[int, int]:
        """(row offset, row count) of a fused parameter's shard along dim 0."""
        cfg = self.config
        rows = {
            "q": (0, cfg.q_size),
            "k": (cfg.q_size, cfg.kv_size),
            "v": (cfg.q_size + cfg.kv_size, cfg.kv_size),
            "gate": (0, cfg.intermediate_size),
            "up": (cfg.intermediate_size, cfg.intermediate_size),
        }
        return rows[shard_id]
