"""The packed tensor-parallel step: what rank 0 packs is what a worker unpacks (no group)."""

from __future__ import annotations

import pytest
import torch

from actors.engine.input_batch import InputBatch, pack_batch
from actors.shard.step import (
    HEADER_LEN,
    Kind,
    StepHeader,
    pack_aux,
    pack_payload,
    step_header,
    unpack_aux,
    unpack_payload,
)


def mixed_batch() -> InputBatch:
    """A prefill chunk that samples, a chunk mid-prefill (no sample) and two decodes."""
    return pack_batch(
        token_ids=[5, 6, 7, 8, 9, 10, 11, 12, 13],
        starts=[0, 16, 40, 3],
        q_lens=[4, 3, 1, 1],
        block_tables=[[7], [1, 2], [3, 4, 5], [6]],
        sampled=[0, 2, 3],
        block_size=16,
        device=torch.device("cpu"),
    )


def test_payload_round_trip_is_the_same_batch() -> None:
    batch = mixed_batch()
    header = step_header(batch, [], [])
    payload = pack_payload(batch)
    assert payload.dtype == torch.int32 and payload.numel() == header.payload_len
    got = unpack_payload(StepHeader.from_tensor(header.to_tensor()), payload)
    for name in ("input_ids", "positions", "logits_indices"):
        assert torch.equal(getattr(got, name), getattr(batch, name)), name
        assert getattr(got, name).dtype == torch.int64, name
    for name in ("slot_mapping", "block_tables", "query_start_loc", "seq_lens"):
        assert torch.equal(getattr(got.attn, name), getattr(batch.attn, name)), name
    assert got.attn.block_tables.shape == (4, 3)
    assert (got.attn.max_query_len, got.attn.max_seq_len) == (4, 41)
    assert (got.num_tokens, got.num_sampled) == (9, 3)


def test_header_and_aux_carry_swaps_and_blocks() -> None:
    swap_out, swap_in = [(3, 0), (4, 1)], [(9, 2)]
    header = step_header(None, swap_out, swap_in)
    raw = header.to_tensor()
    assert raw.shape == (HEADER_LEN,) and raw.dtype == torch.int64
    back = StepHeader.from_tensor(raw)
    assert back == header and back.kind == Kind.STEP and back.num_chunks == 0
    aux = pack_aux(swap_out, swap_in, [])
    assert aux.numel() == back.aux_len
    assert unpack_aux(back, aux) == (swap_out, swap_in, [])
    export = StepHeader(Kind.EXPORT, num_blocks=3)
    assert unpack_aux(export, pack_aux([], [], [8, 1, 5])) == ([], [], [8, 1, 5])


def test_allreduce_setting_is_checked_and_cpu_keeps_the_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from actors.shard.allreduce import ENV, build_reducer

    cpu = torch.device("cpu")
    monkeypatch.setenv(ENV, "fastest")
    with pytest.raises(ValueError, match="FLEETLM_ALLREDUCE: must be nccl or symm_mem"):
        build_reducer(None, cpu, torch.float32)
    monkeypatch.setenv(ENV, "symm_mem")
    assert build_reducer(None, cpu, torch.float32) is None  # gloo on CPU: no fast path
