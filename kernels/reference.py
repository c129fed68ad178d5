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


def lora_ref(
    y: torch.Tensor,  # [T, >= sum(out_dims)], updated in place
    x: torch.Tensor,  # [T, in_dim]
    a_pool: torch.Tensor,  # read flat; A_p rank-row j of slot s at a_offsets[s, p, j]
    a_offsets: torch.Tensor,  # [S, P, R] int64
    b_pool: torch.Tensor,  # read flat; B_p^T rank-row j of slot s at b_offsets[s, p, j]
    b_offsets: torch.Tensor,  # [S, P, R] int64
    ranks: torch.Tensor,  # [S, P] int
    scales: torch.Tensor,  # [S, P] float32
    token_slots: torch.Tensor,  # [T] int, -1 = base only
    out_dims: list[int],  # projection p owns the next out_dims[p] columns of y
) -> None:
    """y[t, cols_p] += ((x[t] @ A_p^T) @ B_p^T) * scale, per adapter (layout: kernels.lora_meta).

    The shrink result is accumulated in fp32 and cast to the weights' dtype before the expand,
    as PEFT does; the expand accumulates in fp32 and adds to y once.
    """
    in_dim = x.shape[1]
    a_flat, b_flat = a_pool.reshape(-1), b_pool.reshape(-1)
    cols = [0]
    for d in out_dims:
        cols.append(cols[-1] + d)
    slots = token_slots.long()
    for slot in sorted(set(slots.tolist()) - {-1}):
        rows = (slots == slot).nonzero().flatten()  # [n]
        xs = x[rows].float()  # [n, in_dim]
        for p, width in enumerate(out_dims):
            r = int(ranks[slot, p])
            if r == 0:
                continue
            a_idx = a_offsets[slot, p, :r, None].cpu() + torch.arange(in_dim)  # [r, in_dim]
            b_idx = b_offsets[slot, p, :r, None].cpu() + torch.arange(width)  # [r, width]
            a = a_flat[a_idx.to(a_flat.device)].float()  # [r, in_dim]
            b_t = b_flat[b_idx.to(b_flat.device)].float()  # [r, width]
            s = (xs @ a.T).to(b_pool.dtype).float()  # [n, r]
            delta = (s @ b_t) * float(scales[slot, p])  # [n, width]
            block = y[rows, cols[p] : cols[p + 1]].float() + delta
            y[rows, cols[p] : cols[p + 1]] = block.to(y.dtype)
