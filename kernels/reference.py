"""Plain-torch twins of every kernel. They define the semantics; the Triton kernels must match.

KV cache layout (fixed by the engine): per layer K and V, each `[num_blocks, block_size,
num_kv_heads, head_dim]`. A slot is `block_id * block_size + offset`. A batch is packed
("varlen"): the query tokens of all requests are concatenated; request i owns query rows
`query_start_loc[i]:query_start_loc[i + 1]`, which are its LAST `q_len_i` positions of a context
of `seq_lens[i]` tokens (the earlier `seq_lens[i] - q_len_i` tokens are already in the cache).
"""

from __future__ import annotations

import torch


def write_kv_ref(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    k_cache: torch.Tensor,  # [N, bs, Hkv, D]
    v_cache: torch.Tensor,  # [N, bs, Hkv, D]
    slot_mapping: torch.Tensor,  # [T] int; negative slots are padding and are skipped
) -> None:
    valid = slot_mapping >= 0
    slots = slot_mapping[valid].long()
    k_flat = k_cache.view(-1, k_cache.shape[-2], k_cache.shape[-1])
    v_flat = v_cache.view(-1, v_cache.shape[-2], v_cache.shape[-1])
    k_flat[slots] = key[valid].to(k_cache.dtype)
    v_flat[slots] = value[valid].to(v_cache.dtype)


def gather_kv_ref(
    cache: torch.Tensor,  # [N, bs, Hkv, D]
    block_table: torch.Tensor,  # [max_blocks] int
    seq_len: int,
) -> torch.Tensor:  # [seq_len, Hkv, D]
    bs = cache.shape[1]
    n_blocks = (seq_len + bs - 1) // bs
    blocks = cache[block_table[:n_blocks].long()]  # [n, bs, Hkv, D]
    return blocks.reshape(-1, cache.shape[2], cache.shape[3])[:seq_len]


def paged_attention_ref(
    query: torch.Tensor,  # [T, Hq, D]
    k_cache: torch.Tensor,  # [N, bs, Hkv, D]
    v_cache: torch.Tensor,  # [N, bs, Hkv, D]
    block_tables: torch.Tensor,  # [B, max_blocks] int
    query_start_loc: torch.Tensor,  # [B + 1] int
    seq_lens: torch.Tensor,  # [B] int
    scale: float,
) -> torch.Tensor:  # [T, Hq, D]
    """Causal attention of each request's new tokens over its whole paged context (fp32 math)."""
    out = torch.empty_like(query)
    hq, hkv = query.shape[1], k_cache.shape[2]
    group = hq // hkv
    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    for i, seq_len in enumerate(lens):
        q = query[starts[i] : starts[i + 1]].float()  # [q_len, Hq, D]
        q_len = q.shape[0]
        if q_len == 0:
            continue
        k = gather_kv_ref(k_cache, block_tables[i], seq_len).float()  # [S, Hkv, D]
        v = gather_kv_ref(v_cache, block_tables[i], seq_len).float()
        k = k.repeat_interleave(group, dim=1)  # [S, Hq, D]
        v = v.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale  # [Hq, q_len, S]
        q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device)[:, None]
        k_pos = torch.arange(seq_len, device=q.device)[None, :]
        scores = scores.masked_fill(k_pos > q_pos, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[starts[i] : starts[i + 1]] = torch.einsum("hqk,khd->qhd", probs, v).to(out.dtype)
    return out


def paged_attention_decode_ref(
    query: torch.Tensor,  # [B, Hq, D], one token per request
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks]
    seq_lens: torch.Tensor,  # [B]
    scale: float,
) -> torch.Tensor:  # [B, Hq, D]
    b = query.shape[0]
    qsl = torch.arange(b + 1, dtype=torch.int32, device=query.device)
    return paged_attention_ref(query, k_cache, v_cache, block_tables, qsl, seq_lens, scale)


def rms_norm_ref(
    x: torch.Tensor,  # [T, H]
    weight: torch.Tensor,  # [H]
    eps: float,
    residual: torch.Tensor | None = None,  # [T, H]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Returns (norm(x + residual) * weight, x + residual) — the HF Llama order, fp32 inside."""
    if residual is not None:
        x = x + residual
        residual = x
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype), residual
