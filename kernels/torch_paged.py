"""Vectorized plain-torch paged attention: the CPU path of `kernels.ops.paged_attention`.

Same signature and semantics as `reference.paged_attention_ref` (the definition), but instead of
a Python loop over requests it handles a whole group of requests with a few batched ops:

1. pad each request's query rows to the group's longest query (`[n, Qg, Hq, D]`);
2. gather K/V through the block table in one `index_select` (`[n, nb * bs, Hkv, D]`);
3. GQA by viewing the query heads as `[Hkv, group]`: one matmul per KV head, no K/V repeat;
4. one masked softmax: key `s` is visible to row `j` iff `s <= seq_len - q_len + j`;
5. scatter the valid rows back into the packed `[T, Hq, D]` output.

Math is fp32 like the twin. Memory is bounded by `max_group_elems`: requests are sorted by
(q_len, seq_len) and cut into groups whose padded working set (K, V, scores, probs) fits it, and
a request whose rows alone do not fit is cut into row pieces (rows `a:b` of a request are a
request of `b - a` rows and context `seq_len - q_len + b`). Only a single row over a context too
long for the budget exceeds it, as the twin's would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# 8M fp32 elements (32 MiB) per group, measured on 2 Xeon cores (docs/kernels-notes.md): smaller
# groups pay more per-group op overhead; at 16M each of the K and V buffers reaches glibc's 32 MiB
# mmap ceiling, so it is handed back to the OS and page-faulted in again on every call (2.5x
# slower at batch 128, 1k context).
DEFAULT_MAX_GROUP_ELEMS = 1 << 23


@dataclass(frozen=True)
class Piece:
    """Query rows `row:row + q_len` of request `req`, whose context is `seq_len` tokens."""

    req: int
    row: int
    q_len: int
    seq_len: int


@dataclass(frozen=True)
class PlanShape:
    block_size: int
    heads_q: int
    kv_row: int  # Hkv * D
    max_group_elems: int

    def cost(self, n: int, q_len: int, seq_len: int) -> int:
        """fp32 elements of n padded pieces: K and V, scores and probs."""
        padded = -(-seq_len // self.block_size) * self.block_size
        return n * padded * 2 * (self.kv_row + self.heads_q * q_len)

    def rows_per_piece(self, seq_len: int) -> int:
        padded = -(-seq_len // self.block_size) * self.block_size
        return max(1, (self.max_group_elems // max(1, 2 * padded) - self.kv_row) // self.heads_q)


def split_rows(starts: list[int], q_lens: list[int], seq_lens: list[int], shape: PlanShape):
    """Every request with rows, as pieces that each fit the budget on their own."""
    pieces: list[Piece] = []
    for i, (start, q, s) in enumerate(zip(starts, q_lens, seq_lens, strict=True)):
        if q <= 0:
            continue
        step = q if shape.cost(1, q, s) <= shape.max_group_elems else shape.rows_per_piece(s)
        for a in range(0, q, step):
            b = min(q, a + step)
            pieces.append(Piece(i, start + a, b - a, s - q + b))
    return pieces


def plan_groups(pieces: list[Piece], shape: PlanShape) -> list[list[Piece]]:
    """Pieces in groups whose padded working set stays under the budget.

    Sorting by (q_len, seq_len) keeps decodes together and similar lengths side by side, so
    padding wastes little.
    """
    groups: list[list[Piece]] = []
    current: list[Piece] = []
    q_max = s_max = 0
    for p in sorted(pieces, key=lambda p: (p.q_len, p.seq_len)):
        q_new, s_new = max(q_max, p.q_len), max(s_max, p.seq_len)
        if current and shape.cost(len(current) + 1, q_new, s_new) > shape.max_group_elems:
            groups.append(current)
            current, q_new, s_new = [], p.q_len, p.seq_len
        current.append(p)
        q_max, s_max = q_new, s_new
    if current:
        groups.append(current)
    return groups


@dataclass(frozen=True)
class Workspace:
    """Flat buffers one call reuses for every group (views of the right shape are cut per group).

    Fresh multi-MB tensors per group cost a page fault per 4 KiB on first touch (glibc hands big
    blocks back to the OS on free): at batch 128 and 1k context that was more than half the time.
    """

    k: torch.Tensor  # cache dtype, the gathered K blocks
    v: torch.Tensor
    k32: torch.Tensor  # fp32 copies (aliases of k / v when the cache is fp32)
    v32: torch.Tensor
    scores: torch.Tensor  # fp32
    probs: torch.Tensor
    out: torch.Tensor

    @classmethod
    def allocate(
        cls, kv_elems: int, score_elems: int, out_elems: int, cache: torch.Tensor
    ) -> Workspace:
        dev = cache.device
        k = torch.empty(kv_elems, dtype=cache.dtype, device=dev)
        v = torch.empty(kv_elems, dtype=cache.dtype, device=dev)
        if cache.dtype == torch.float32:
            k32, v32 = k, v
        else:
            k32 = torch.empty(kv_elems, device=dev)
            v32 = torch.empty(kv_elems, device=dev)
        return cls(
            k=k,
            v=v,
            k32=k32,
            v32=v32,
            scores=torch.empty(score_elems, device=dev),
            probs=torch.empty(score_elems, device=dev),
            out=torch.empty(out_elems, device=dev),
        )


def gather_kv(
    cache: torch.Tensor,  # [N, bs, Hkv, D]
    tables: torch.Tensor,  # [n, nb] int64, no negative ids
    buf: torch.Tensor,  # flat, cache dtype
    buf32: torch.Tensor,  # flat fp32 (may be buf itself)
) -> torch.Tensor:  # [n, nb * bs, Hkv, D] fp32
    n, nb = tables.shape
    bs, hkv, d = cache.shape[1:]
    blocks = buf[: n * nb * bs * hkv * d].view(n * nb, bs, hkv, d)
    # index_select copies whole blocks (contiguous rows); advanced indexing is ~3x slower here.
    torch.index_select(cache, 0, tables.flatten(), out=blocks)
    kv32 = buf32[: blocks.numel()].view(n, nb * bs, hkv, d)
    if buf32.data_ptr() != buf.data_ptr():
        kv32.copy_(blocks.view(n, nb * bs, hkv, d))
    return kv32


def pad_queries(
    query: torch.Tensor,  # [T, Hq, D]
    starts: torch.Tensor,  # [n] int64
    q_lens: torch.Tensor,  # [n] int64
    q_max: int,
    hkv: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q [Hkv, n, Qg * group, D] fp32 pre-scaled, rows [n, Qg], valid [n, Qg])."""
    n = starts.shape[0]
    hq, d = query.shape[1:]
    j = torch.arange(q_max, device=query.device)  # [Qg]
    valid = j[None, :] < q_lens[:, None]  # [n, Qg]
    rows = torch.where(valid, starts[:, None] + j[None, :], 0)  # [n, Qg]; pads read row 0
    q = query[rows].float() * scale  # [n, Qg, Hq, D]
    # Query head h reads KV head h // group: view heads as [Hkv, group] and fold the group into
    # the rows, so one matmul per KV head covers every query head that shares it (no K/V copy).
    q = q.view(n, q_max, hkv, hq // hkv, d).permute(2, 0, 1, 3, 4)
    return q.reshape(hkv, n, q_max * (hq // hkv), d), rows, valid


def hidden_keys(
    q_lens: torch.Tensor,  # [n] int64
    seq_lens: torch.Tensor,  # [n] int64
    q_max: int,
    outside: torch.Tensor,  # [n, S] bool, key past the request's length
) -> torch.Tensor:  # [n, Qg, S] bool
    """Keys a row may not see: later than its own position (causal), or past the length."""
    j = torch.arange(q_max, device=q_lens.device)
    k_pos = torch.arange(outside.shape[1], device=q_lens.device)  # [S]
    q_pos = (seq_lens - q_lens)[:, None] + j[None, :]  # [n, Qg] absolute position of each row
    hidden = (k_pos[None, None, :] > q_pos[:, :, None]) | outside[:, None, :]
    # Key 0 is visible to every real row anyway; keeping it for all rows means no row is fully
    # masked, so a pad row (or a seq_len 0 row) gets a zero V row instead of a NaN softmax.
    hidden[:, :, 0] = False
    return hidden


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
    ws: Workspace,
    out: torch.Tensor,  # [T, Hq, D], written at the group's rows
) -> None:
    n = tables.shape[0]
    hq, d = query.shape[1:]
    hkv = k_cache.shape[2]
    q, rows, valid = pad_queries(query, starts, q_lens, q_max, hkv, scale)
    rows_per_head = q.shape[2]  # Qg * group
    k = gather_kv(k_cache, tables, ws.k, ws.k32)  # [n, S, Hkv, D]
    v = gather_kv(v_cache, tables, ws.v, ws.v32)
    s_len = k.shape[1]
    outside = torch.arange(s_len, device=query.device)[None, :] >= seq_lens[:, None]  # [n, S]
    # Slots past a request's length hold whatever their block's last owner left, maybe NaN from
    # a request that diverged; 0 * NaN would leak it into this request. (K needs no cleaning:
    # masked_fill below overwrites those scores.) Few slots, so index them rather than a pass.
    v.view(n * s_len, hkv * d).index_fill_(0, outside.flatten().nonzero().squeeze(1), 0.0)
    scores = ws.scores[: hkv * n * rows_per_head * s_len].view(hkv, n, rows_per_head, s_len)
    for h in range(hkv):
        # k[:, :, h] is a row-strided view BLAS reads in place (no per-head copy).
        torch.bmm(q[h], k[:, :, h].transpose(1, 2), out=scores[h])  # [n, Qg * group, S]
    hidden = hidden_keys(q_lens, seq_lens, q_max, outside)  # [n, Qg, S]
    scores.view(hkv, n, q_max, hq // hkv, s_len).masked_fill_(
        hidden[None, :, :, None, :], float("-inf")
    )
    probs = ws.probs[: scores.numel()].view(scores.shape)
    torch.softmax(scores, dim=-1, out=probs)  # [Hkv, n, Qg * group, S]
    o = ws.out[: hkv * n * rows_per_head * d].view(hkv, n, rows_per_head, d)
    for h in range(hkv):
        torch.bmm(probs[h], v[:, :, h], out=o[h])  # [n, Qg * group, D]
    o = o.view(hkv, n, q_max, hq // hkv, d).permute(1, 2, 0, 3, 4).reshape(n, q_max, hq, d)
    out[rows[valid]] = o[valid].to(out.dtype)


def workspace_for(groups: list[list[Piece]], query: torch.Tensor, cache: torch.Tensor) -> Workspace:
    """Buffers sized for the largest group."""
    bs, hkv, d = cache.shape[1:]
    hq = query.shape[1]
    kv = scores = out = 0
    for group in groups:
        s_pad = -(-max(p.seq_len for p in group) // bs) * bs
        rows = len(group) * max(p.q_len for p in group) * hq  # Hkv x n x Qg x group
        kv = max(kv, len(group) * s_pad * hkv * d)
        scores = max(scores, rows * s_pad)
        out = max(out, rows * d)
    return Workspace.allocate(kv, scores, out, cache)


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
    Table entries past a request's length are never read into the output (they may be -1).
    """
    out = torch.zeros_like(query)
    shape = PlanShape(
        block_size=k_cache.shape[1],
        heads_q=query.shape[1],
        kv_row=k_cache.shape[2] * k_cache.shape[3],
        max_group_elems=max_group_elems,
    )
    starts = query_start_loc.tolist()
    q_lens = [b - a for a, b in zip(starts[:-1], starts[1:], strict=True)]
    pieces = split_rows(starts[:-1], q_lens, seq_lens.tolist(), shape)
    groups = plan_groups(pieces, shape)
    ws = workspace_for(groups, query, k_cache)
    for group in groups:
        attend_pieces(query, k_cache, v_cache, block_tables, group, scale, ws, out)
    return out


def attend_pieces(
    query: torch.Tensor,  # [T, Hq, D]
    k_cache: torch.Tensor,  # [N, bs, Hkv, D]
    v_cache: torch.Tensor,  # [N, bs, Hkv, D]
    block_tables: torch.Tensor,  # [B, max_blocks] int
    group: list[Piece],
    scale: float,
    ws: Workspace,
    out: torch.Tensor,  # [T, Hq, D]
) -> None:
    n_blocks = -(-max(p.seq_len for p in group) // k_cache.shape[1])
    if n_blocks == 0:  # only rows with no context (invalid for ops): zeros, like the twin
        return
    dev = query.device
    cols = torch.tensor([[p.req, p.row, p.q_len, p.seq_len] for p in group], device=dev)  # [n, 4]
    # -1 holes sit past each length; any valid id works there since those slots are masked.
    tables = block_tables[cols[:, 0], :n_blocks].long().clamp_(min=0)  # [n, nb]
    q_max = max(p.q_len for p in group)
    attend_group(
        query, k_cache, v_cache, tables, cols[:, 1], cols[:, 2], cols[:, 3], q_max, scale, ws, out
    )
