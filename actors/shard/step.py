"""What rank 0 sends the other shards: a step's model inputs, already built and packed.

Rank 0 builds a step's InputBatch once (on the host), packs its index tensors into one int32
buffer and broadcasts it; every rank then runs the forward on views of that buffer. A worker
neither rebuilds the batch nor unpickles anything between receiving a step and launching it.

    header   StepHeader as [HEADER_LEN] int64: the message kind, the sizes that cut the payload,
             and the host ints the attention dispatch needs (max query / sequence length)
    payload  [n] int32, the step's index tensors end to end (see PAYLOAD_ORDER)
    aux      [m] int64 host-side block ids: swap pairs, or a KV export/import's blocks

This module only packs and unpacks; actors/shard/runner.py moves the pieces between ranks.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields
from enum import IntEnum

import torch

from actors.engine.input_batch import InputBatch
from actors.models.attention import AttentionMetadata


class Kind(IntEnum):
    STEP = 1
    EXPORT = 2
    IMPORT = 3
    STOP = 4


@dataclass(frozen=True)
class StepHeader:
    kind: int
    num_tokens: int = 0  # T
    num_chunks: int = 0  # B
    table_width: int = 0  # W: block-table columns
    num_sampled: int = 0  # S
    max_query_len: int = 0
    max_seq_len: int = 0
    num_swap_out: int = 0  # (device, host) pairs in aux, then the swap-ins
    num_swap_in: int = 0
    num_blocks: int = 0  # a KV export/import's block ids in aux

    @property
    def payload_len(self) -> int:
        t, b = self.num_tokens, self.num_chunks
        return 3 * t + (b + 1) + b + self.num_sampled + b * self.table_width

    @property
    def aux_len(self) -> int:
        return 2 * (self.num_swap_out + self.num_swap_in) + self.num_blocks

    def to_tensor(self) -> torch.Tensor:  # [HEADER_LEN] int64
        return torch.tensor(astuple(self), dtype=torch.int64)

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> StepHeader:
        return cls(*(int(v) for v in t.tolist()))


HEADER_LEN = len(fields(StepHeader))
# The payload's sections, in order: input_ids, positions, slot_mapping [T] each,
# query_start_loc [B + 1], seq_lens [B], logits_indices [S], block_tables [B * W].
PAYLOAD_ORDER = ("input_ids", "positions", "slots", "qsl", "seq_lens", "logits", "tables")


def step_header(
    batch: InputBatch | None, swap_out: list[tuple[int, int]], swap_in: list[tuple[int, int]]
) -> StepHeader:
    swaps = {"num_swap_out": len(swap_out), "num_swap_in": len(swap_in)}
    if batch is None:
        return StepHeader(Kind.STEP, **swaps)
    return StepHeader(
        Kind.STEP,
        num_tokens=batch.num_tokens,
        num_chunks=batch.attn.seq_lens.shape[0],
        table_width=batch.attn.block_tables.shape[1],
        num_sampled=batch.num_sampled,
        max_query_len=batch.attn.max_query_len,
        max_seq_len=batch.attn.max_seq_len,
        **swaps,
    )


def pack_payload(batch: InputBatch) -> torch.Tensor:
    """The batch's tensors (host) as one int32 buffer [payload_len], in PAYLOAD_ORDER."""
    a = batch.attn
    parts = (
        batch.input_ids,
        batch.positions,
        a.slot_mapping,
        a.query_start_loc,
        a.seq_lens,
        batch.logits_indices,
        a.block_tables.reshape(-1),
    )
    return torch.cat([p.to(torch.int32) for p in parts])


def unpack_payload(header: StepHeader, payload: torch.Tensor) -> InputBatch:
    """The InputBatch over views of `payload` (on any device); int64 where the model wants it."""
    t, b, w, s = header.num_tokens, header.num_chunks, header.table_width, header.num_sampled
    sizes = [t, t, t, b + 1, b, s, b * w]
    ids, pos, slots, qsl, seq_lens, logits, tables = torch.split(payload, sizes)
    attn = AttentionMetadata(
        slot_mapping=slots.long(),
        block_tables=tables.view(b, w),
        query_start_loc=qsl,
        seq_lens=seq_lens,
        max_query_len=header.max_query_len,
        max_seq_len=header.max_seq_len,
    )
    return InputBatch(
        input_ids=ids.long(),
        positions=pos.long(),
        attn=attn,
        logits_indices=logits.long(),
        num_tokens=t,
        num_sampled=s,
    )


def pack_aux(
    swap_out: list[tuple[int, int]], swap_in: list[tuple[int, int]], block_ids: list[int]
) -> torch.Tensor:
    flat = [v for pair in (*swap_out, *swap_in) for v in pair] + list(block_ids)
    return torch.tensor(flat, dtype=torch.int64)


def unpack_aux(
    header: StepHeader, aux: torch.Tensor
) -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[int]]:
    """(swap_out pairs, swap_in pairs, block ids) from the aux buffer."""
    values = aux.tolist()
    n_out, n_in = 2 * header.num_swap_out, 2 * header.num_swap_in
    pairs = list(zip(values[: n_out + n_in : 2], values[1 : n_out + n_in : 2], strict=True))
    return pairs[: header.num_swap_out], pairs[header.num_swap_out :], values[n_out + n_in :]
