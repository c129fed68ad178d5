"""Turn a step's scheduled chunks into the packed model inputs.

A chunk covers tokens [request.num_computed_tokens, + num_new_tokens) of its request; their KV
goes to the request's `block_ids`. Host-side work is one Python pass over the chunks (it runs
every step for every request); lists become tensors through numpy, the index arithmetic
(positions, slots) is vectorized in torch on the host, with a shortcut for pure-decode steps,
then everything moves to the device in one non-blocking copy each (from pinned memory on GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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


def _bad_chunk(chunk: ScheduledChunk, block_size: int) -> ValueError:
    """The error for a chunk outside its request's tokens or blocks."""
    req = chunk.request
    if chunk.num_new_tokens < 1 or chunk.end > req.num_tokens:
        return ValueError(
            f"chunk of {req.request_id!r}: tokens [{chunk.start}, {chunk.end}) are outside the "
            f"{req.num_tokens} tokens it knows"
        )
    return ValueError(
        f"chunk of {req.request_id!r}: {len(req.block_ids)} blocks of {block_size} "
        f"cannot hold {chunk.end} tokens"
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
    # One pass over the chunks gathers every per-request field; this runs every step for every
    # request, so it reads the counters once and leaves the per-token arithmetic to pack_batch.
    token_ids: list[int] = []
    starts: list[int] = []
    q_lens: list[int] = []
    tables: list[list[int]] = []
    sampled: list[int] = []
    for i, c in enumerate(chunks):
        req = c.request
        start, q = req.num_computed_tokens, c.num_new_tokens
        end, known, blocks = start + q, req.num_tokens, req.block_ids
        if q < 1 or end > known or len(blocks) * block_size < end:
            raise _bad_chunk(c, block_size)
        token_ids += req.tokens_slice(start, end)  # the runner's request view (actors/shard too)
        starts.append(start)
        q_lens.append(q)
        tables.append(blocks[: -(-end // block_size)])
        if end == known:
            sampled.append(i)
    max_end = max(s + q for s, q in zip(starts, q_lens, strict=True))
    if max_end > max_model_len:
        raise ValueError(f"max_model_len: a chunk reaches {max_end} > {max_model_len}")
    return pack_batch(
        token_ids=token_ids,
        starts=starts,
        q_lens=q_lens,
        block_tables=tables,
        sampled=sampled,
        block_size=block_size,
        device=device,
        num_blocks=num_blocks,
    )


def _int_tensor(values: list[int], dtype: type[np.signedinteger]) -> torch.Tensor:
    # numpy converts a flat list of Python ints several times faster than torch.tensor does.
    return torch.from_numpy(np.array(values, dtype=dtype))


def pack_batch(
    *,
    token_ids: list[int],  # [T] the chunks' tokens, concatenated
    starts: list[int],  # [B] first position of each chunk
    q_lens: list[int],  # [B] tokens per chunk
    block_tables: list[list[int]],  # [B, <= width] rows shorter than the widest get block 0
    sampled: list[int],  # chunk indices whose last row produces logits
    block_size: int,
    device: torch.device,
    num_blocks: int | None = None,  # when given, every table entry must be a valid block id
) -> InputBatch:
    num_chunks = len(q_lens)
    width = max(len(row) for row in block_tables)
    flat: list[int] = []
    for row in block_tables:
        flat += row
        if len(row) < width:
            flat += [0] * (width - len(row))
    tables = _int_tensor(flat, np.int32).view(num_chunks, width)  # [B, width]
    # The GPU kernels skip out-of-range blocks silently; a bad id must fail the step instead.
    if num_blocks is not None:
        lo, hi = torch.aminmax(tables)
        if int(lo) < 0 or int(hi) >= num_blocks:
            raise ValueError(f"block_ids: a request's block ids fall outside [0, {num_blocks})")
    starts_t = _int_tensor(starts, np.int64)  # [B]
    num_tokens, max_query_len = sum(q_lens), max(q_lens)
    if len(token_ids) != num_tokens:
        raise ValueError(f"token_ids: {len(token_ids)} tokens but q_lens add up to {num_tokens}")
    if max_query_len == 1 and num_tokens == num_chunks:  # decode: each chunk is one row
        q_lens_t = torch.ones(num_chunks, dtype=torch.int64)  # [B]
        qsl = torch.arange(num_chunks + 1, dtype=torch.int64)  # [B + 1]
        positions = starts_t  # [T]
        row_chunk = torch.arange(num_chunks)  # [T]
    else:
        q_lens_t = _int_tensor(q_lens, np.int64)  # [B]
        qsl = torch.zeros(num_chunks + 1, dtype=torch.int64)  # [B + 1]
        torch.cumsum(q_lens_t, 0, out=qsl[1:])
        # Packed row r of chunk i sits at position start_i + (r - qsl_i).
        row_chunk = torch.repeat_interleave(torch.arange(num_chunks), q_lens_t)  # [T]
        positions = torch.arange(num_tokens) + (starts_t - qsl[:-1])[row_chunk]  # [T]
    blocks = tables[row_chunk, positions // block_size].long()  # [T]
    slots = blocks * block_size + positions % block_size  # [T]
    logits_indices = qsl[1:][_int_tensor(sampled, np.int64)] - 1  # [S]
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
        max_query_len=max_query_len,
        max_seq_len=max(s + q for s, q in zip(starts, q_lens, strict=True)),
    )
    return InputBatch(
        input_ids=dev(_int_tensor(token_ids, np.int64)),
        positions=dev(positions),
        attn=attn,
        logits_indices=dev(logits_indices),
        num_tokens=num_tokens,
        num_sampled=len(sampled),
    )
