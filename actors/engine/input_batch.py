"""Turn a step's scheduled chunks into the packed model inputs.

A chunk covers tokens [request.num_computed_tokens, + num_new_tokens) of its request; their KV
goes to the request's `block_ids`. Host-side work is one list comprehension per field; the
index arithmetic (positions, slots) is vectorized in torch on the host, then everything moves to
the device in one non-blocking copy each (from pinned memory on GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actors.engine.outputs import ScheduledChunk
from actors.models.attention import AttentionMetadata


@dataclass(frozen=True)
class InputBatch:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    attn: AttentionMetadata
    logits_indices: torch.Tensor  # [S] int64: the last row of every chunk that samples
    num_tokens: int
    num_sampled: int


def _check_chunks(chunks: list[ScheduledChunk], block_size: int) -> None:
    for c in chunks:
        req = c.request
        if c.num_new_tokens < 1 or c.end > req.num_tokens:
            raise ValueError(
                f"chunk of {req.request_id!r}: tokens [{c.start}, {c.end}) are outside the "
                f"{req.num_tokens} tokens it knows"
            )
        if len(req.block_ids) * block_size < c.end:
            raise ValueError(
                f"chunk of {req.request_id!r}: {len(req.block_ids)} blocks of {block_size} "
                f"cannot hold {c.end} tokens"
            )


def build_input_batch(
    chunks: list[ScheduledChunk],
    *,
    block_size: int,
    num_blocks: int,
    max_model_len: int,
    device: torch.device,
) -> InputBatch:
    """Raises ValueError (naming the request) for a chunk its blocks cannot hold."""
    _check_chunks(chunks, block_size)
    ends = [c.end for c in chunks]
    if max(ends) > max_model_len:
        raise ValueError(f"max_model_len: a chunk reaches {max(ends)} > {max_model_len}")
    n_blocks = [-(-e // block_size) for e in ends]
    width = max(n_blocks)
    return pack_batch(
        token_ids=[t for c in chunks for t in c.request.tokens_slice(c.start, c.end)],
        starts=[c.start for c in chunks],
        q_lens=[c.num_new_tokens for c in chunks],
        block_tables=[
            c.request.block_ids[:n] + [0] * (width - n)
            for c, n in zip(chunks, n_blocks, strict=True)
        ],
        sampled=[i for i, c in enumerate(chunks) if c.needs_sample],
        block_size=block_size,
        device=device,
        num_blocks=num_blocks,
    )


def pack_batch(
    *,
    token_ids: list[int],  # [T] the chunks' tokens, concatenated
    starts: list[int],  # [B] first position of each chunk
    q_lens: list[int],  # [B] tokens per chunk
    block_tables: list[list[int]],  # [B, width] padded with any valid block id
    sampled: list[int],  # chunk indices whose last row produces logits
    block_size: int,
    device: torch.device,
    num_blocks: int | None = None,  # when given, every table entry must be a valid block id
) -> InputBatch:
    starts_t = torch.tensor(starts, dtype=torch.int64)  # [B]
    q_lens_t = torch.tensor(q_lens, dtype=torch.int64)  # [B]
    qsl = torch.zeros(len(q_lens) + 1, dtype=torch.int64)  # [B + 1]
    torch.cumsum(q_lens_t, 0, out=qsl[1:])
    tables = torch.tensor(block_tables, dtype=torch.int32)  # [B, width]
    # The GPU kernels skip out-of-range blocks silently; a bad id must fail the step instead.
    if num_blocks is not None and (int(tables.min()) < 0 or int(tables.max()) >= num_blocks):
        raise ValueError(f"block_ids: a request's block ids fall outside [0, {num_blocks})")
    num_tokens = int(qsl[-1])
    # Packed row r of chunk i sits at position start_i + (r - qsl_i).
    row_chunk = torch.repeat_interleave(torch.arange(len(q_lens)), q_lens_t)  # [T]
    positions = torch.arange(num_tokens) + (starts_t - qsl[:-1])[row_chunk]  # [T]
    blocks = tables[row_chunk, positions // block_size].long()  # [T]
    slots = blocks * block_size + positions % block_size  # [T]
    logits_indices = qsl[1:][torch.tensor(sampled, dtype=torch.int64)] - 1  # [S]
    seq_lens = starts_t + q_lens_t  # [B]

    def dev(t: torch.Tensor) -> torch.Tensor:
        if device.type == "cpu":
            return t
        return t.pin_memory().to(device, non_blocking=True)

    attn = AttentionMetadata(
        slot_mapping=dev(slots),
        block_tables=dev(tables),
        query_start_loc=dev(qsl.to(torch.int32)),
        seq_lens=dev(seq_lens.to(torch.int32)),
        max_query_len=max(q_lens),
        max_seq_len=max(s + q for s, q in zip(starts, q_lens, strict=True)),
    )
    return InputBatch(
        input_ids=dev(torch.tensor(token_ids, dtype=torch.int64)),
        positions=dev(positions),
        attn=attn,
        logits_indices=dev(logits_indices),
        num_tokens=num_tokens,
        num_sampled=len(sampled),
    )
