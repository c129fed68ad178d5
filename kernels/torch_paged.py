"""Vectorized plain-torch paged attention: the CPU path of `kernels.ops.paged_attention`.

Same signature and semantics as `reference.paged_attention_ref` (the definition), but instead of
a Python loop over requests it handles a whole group of requests with a few batched ops:

1. pad each request's query rows to the group's longest query (`[n, Qg, Hq, D]`);
2. gather K/V through the block table in one indexing op (`[n, nb * bs, Hkv, D]`);
3. GQA by viewing the query heads as `[Hkv, group]` (K/V are never repeated);
4. one masked softmax: key `s` is visible to row `j` iff `s <= seq_len - q_len + j`;
5. scatter the valid rows back into the packed `[T, Hq, D]` output.

Math is fp32 like the twin. Memory per group is about `n x padded_len x (Hq x Qg + 2 Hkv x D)`
fp32 elements; requests are sorted by (q_len, seq_len) and cut into groups under
`max_group_elems`, so a huge batch (or one long prefill next to many decodes) never builds a
`B x max_seq_len` tensor larger than that budget. A single request above the budget still runs
alone, as the twin would run it.
"""

from __future__ import annotations

import torch

# ~64 MiB of fp32 per group: big enough that a 256-request decode batch of a small model is one
# group (one set of kernel launches), small enough to stay far below host memory for 8B shapes.
DEFAULT_MAX_GROUP_ELEMS = 1 << 24


def plan_groups(
    q_lens: list[int],
    seq_lens: list[int],
    *,
    block_size: int,
    heads_q: int,
    kv_row: int,  # Hkv * D
    max_group_elems: int,
) -> list[list[int]]:
    """Request indices in groups whose padded working set stays under `max_group_elems`.

    Requests without query rows are dropped. Sorting by (q_len, seq_len) keeps decodes together
    and similar lengths side by side, so padding wastes little.
    """
    order = sorted(
        (i for i, q in enumerate(q_lens) if q > 0), key=lambda i: (q_lens[i], seq_lens[i])
    )
    groups: list[list[int]] = []
    current: list[int] = []
    q_max = s_max = 0
    for i in order:
        q_new, s_new = max(q_max, q_lens[i]), max(s_max, seq_lens[i])
        padded = -(-s_new // block_size) * block_size
        cost = (len(current) + 1) * padded * (heads_q * q_new + 2 * kv_row)
        if current and cost > max_group_elems:
            groups.append(current)
            current, q_new, s_new = [], q_lens[i], seq_lens[i]
        current.append(i)
        q_max, s_max = q_new, s_new
    if current:
        groups.append(current)
    return groups


def gather_kv(
    cache: torch.Tensor,  # [N, bs, Hkv, D]
    tables: torch.Tensor,  # [n, nb] int64, no negative ids
) -> torch.Tensor:  # [n, nb * bs, Hkv, D] fp32
    n, nb = tables.shape
    bs, hkv, d = cache.shape[1:]
    # index_select copies whole blocks (contiguous rows); advanced indexing is ~3x slower here.
    kv = cache.index_select(0, tables.flatten()).view(n, nb * bs, hkv, d)
    return kv.float()


def attend_group(
    query: torch.Tensor,  # [T, Hq, D]
    k_cache: torch.Tensor,  # [N, bs, Hkv, D]
    v_cache: torch.Tensor,  # [N, bs, Hkv, D]
    tables: torch.Tensor,  # [n, nb] int64
    starts: torch.Tensor,  # [n] int64, first query row of each request
    q_lens: torch.Tensor,  # [n] int64
    seq_lens: torch.Tensor,  # [n] int64
    q_max: int,
    scale: float,
    out: torch.Tensor,  # [T, Hq, D], written at the group's rows
) -> None:
    n = tables.shape[0]
    hq, d = query.shape[1:]
    hkv = k_cache.shape[2]
    group = hq // hkv
    rows_per_head = q_max * group
    j = torch.arange(q_max, device=query.device)  # [Qg]
    valid = j[None, :] < q_lens[:, None]  # [n, Qg]
    rows = torch.where(valid, starts[:, None] + j[None, :], 0)  # [n, Qg]; pads read row 0
    q = query[rows].float() * scale  # [n, Qg, Hq, D]
    # Query head h reads KV head h // group: view heads as [Hkv, group] and fold the group into
    # the rows, so one matmul per KV head covers every query head that shares it (no K/V copy).
    q = q.view(n, q_max, hkv, group, d).permute(2, 0, 1, 3, 4).reshape(hkv, n, rows_per_head, d)
    k = gather_kv(k_cache, tables)  # [n, S, Hkv, D]
    v = gather_kv(v_cache, tables)
    s_len = k.shape[1]
    k_pos = torch.arange(s_len, device=query.device)  # [S]
    outside = k_pos[None, :] >= seq_lens[:, None]  # [n, S]
    # Slots past a request's length hold whatever their block's last owner left, maybe NaN from
    # a request that diverged; 0 * NaN would leak it into this request. (K needs no cleaning:
    # masked_fill below overwrites those scores.) Few slots, so index them rather than a pass.
    v.view(n * s_len, hkv * d).index_fill_(0, outside.flatten().nonzero().squeeze(1), 0.0)
    scores = torch.empty(hkv, n, rows_per_head, s_len, device=query.device)
    for h in range(hkv):
        # k[:, :, h] is a row-strided view BLAS reads in place (no per-head copy).
        torch.bmm(q[h], k[:, :, h].transpose(1, 2), out=scores[h])  # [n, Qg * group, S]
    q_pos = (seq_lens - q_lens)[:, None] + j[None, :]  # [n, Qg] absolute position of each row
    hidden = (k_pos[None, None, :] > q_pos[:, :, None]) | outside[:, None, :]  # [n, Qg, S]
    # Key 0 is visible to every real row anyway; keeping it for all rows means no row is fully
    # masked, so a pad row (or a seq_len 0 row) gets a zero V row instead of a NaN softmax.
    hidden[:, :, 0] = False
    scores5 = scores.view(hkv, n, q_max, group, s_len)
    scores5.masked_fill_(hidden[None, :, :, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # [Hkv, n, Qg * group, S]
    o = torch.empty(hkv, n, rows_per_head, d, device=query.device)
    for h in range(hkv):
        torch.bmm(probs[h], v[:, :, h], out=o[h])  # [n, Qg * group, D]
    o = o.view(hkv, n, q_max, group, d).permute(1, 2, 0, 3, 4).reshape(n, q_max, hq, d)
    out[rows[valid]] = o[valid].to(out.dtype)


def paged_attention_torch(
    query: torch.Tensor,  # [T, Hq, D]
    k_cache: torch.Tensor,  # [N, bs, Hkv, D]
    v_cache: torch.Tensor,  # [N, bs, Hkv, D]
    block_tables: torch.Tensor,  # [B, max_blocks] int
    query_start_loc: torch.Tensor,  # [B + 1] int
    seq_lens: torch.Tensor,  # [B] int
    scale: float,
    *,
    max_group_elems: int = DEFAULT_MAX_GROUP_ELEMS,
) -> torch.Tensor:  # [T, Hq, D]
    """Causal attention of each request's new tokens over its whole paged context (fp32 math).

    Semantics of `reference.paged_attention_ref`; rows no request owns come back as zeros.
    Table entries past a request's length are never used for output (they may be -1).
    """
    out = torch.zeros_like(query)
    bs = k_cache.shape[1]
    qsl = query_start_loc.long()
    q_lens_t = qsl[1:] - qsl[:-1]  # [B]
    seq_t = seq_lens.long()
    q_host, s_host = q_lens_t.tolist(), seq_t.tolist()
    groups = plan_groups(
        q_host,
        s_host,
        block_size=bs,
        heads_q=query.shape[1],
        kv_row=k_cache.shape[2] * k_cache.shape[3],
        max_group_elems=max_group_elems,
    )
    for members in groups:
        idx = torch.tensor(members, dtype=torch.long, device=query.device)  # [n]
        n_blocks = -(-max(s_host[i] for i in members) // bs)
        # -1 holes sit past each length; any valid id works there since those slots are masked.
        tables = block_tables[idx, :n_blocks].long().clamp_(min=0)  # [n, nb]
        q_max = max(q_host[i] for i in members)
        attend_group(
            query, k_cache, v_cache, tables, qsl[idx], q_lens_t[idx], seq_t[idx], q_max, scale, out
        )
    return out
