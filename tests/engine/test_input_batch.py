"""Input building: the pure-decode shortcut and the one-pass builder against a per-token oracle.

The oracle spells out the packed inputs token by token with Python loops (the slow, obvious
definition); the builder must produce the same tensors for decode-only, prefill-only and mixed
steps, and name the request when a chunk does not fit.
"""

from __future__ import annotations

import random

import pytest
import torch

from actors.common.sampling_params import SamplingParams
from actors.engine.input_batch import InputBatch, build_input_batch, pack_batch
from actors.engine.outputs import ScheduledChunk
from actors.engine.request import Request

BS = 4
CPU = torch.device("cpu")


def _request(rid: str, rng: random.Random, prompt_len: int, num_output: int) -> Request:
    req = Request(rid, [rng.randrange(256) for _ in range(prompt_len)], SamplingParams())
    req.output_token_ids = [rng.randrange(256) for _ in range(num_output)]
    return req


def _chunk(req: Request, computed: int, num_new: int, rng: random.Random) -> ScheduledChunk:
    req.num_computed_tokens = computed
    need = -(-(computed + num_new) // BS)
    req.block_ids = rng.sample(range(64), need + rng.randrange(2))  # sometimes a spare block
    return ScheduledChunk(req, num_new)


def _oracle(chunks: list[ScheduledChunk]) -> dict[str, list]:
    tokens, positions, slots, qsl, seq_lens, logits = [], [], [], [0], [], []
    for c in chunks:
        req = c.request
        for pos in range(c.start, c.end):
            tokens.append(req.all_token_ids[pos])
            positions.append(pos)
            slots.append(req.block_ids[pos // BS] * BS + pos % BS)
        qsl.append(qsl[-1] + c.num_new_tokens)
        seq_lens.append(c.end)
        if c.needs_sample:
            logits.append(qsl[-1] - 1)
    return {
        "input_ids": tokens,
        "positions": positions,
        "slots": slots,
        "qsl": qsl,
        "seq_lens": seq_lens,
        "logits": logits,
    }


def _build(chunks: list[ScheduledChunk]) -> InputBatch:
    return build_input_batch(chunks, block_size=BS, num_blocks=64, max_model_len=256, device=CPU)


@pytest.mark.parametrize("kind", ["decode", "prefill", "mixed"])
def test_builder_matches_the_per_token_oracle(kind: str) -> None:
    rng = random.Random(kind)
    chunks = []
    for i in range(9):
        req = _request(f"r{i}", rng, rng.randrange(1, 20), rng.randrange(0, 6))
        n = req.num_tokens
        decode = kind == "decode" or (kind == "mixed" and i % 2 == 0)
        if decode:
            chunks.append(_chunk(req, n - 1, 1, rng))
        else:  # a prefill chunk, sometimes one that stops before the last token
            start = rng.randrange(0, n - 1)
            chunks.append(_chunk(req, start, rng.randrange(1, n - start + 1), rng))
    batch = _build(chunks)
    want = _oracle(chunks)
    assert batch.input_ids.tolist() == want["input_ids"]
    assert batch.positions.tolist() == want["positions"]
    assert batch.attn.slot_mapping.tolist() == want["slots"]
    assert batch.attn.query_start_loc.tolist() == want["qsl"]
    assert batch.attn.seq_lens.tolist() == want["seq_lens"]
    assert batch.logits_indices.tolist() == want["logits"]
    assert batch.num_tokens == len(want["input_ids"])
    assert batch.attn.max_query_len == max(c.num_new_tokens for c in chunks)
    assert batch.attn.max_seq_len == max(want["seq_lens"])
    width = batch.attn.block_tables.shape[1]
    for row, c in zip(batch.attn.block_tables.tolist(), chunks, strict=True):
        n = -(-c.end // BS)
        assert row[:n] == c.request.block_ids[:n] and row[n:] == [0] * (width - n)


def test_bad_chunks_name_the_request() -> None:
    rng = random.Random(1)
    req = _request("short", rng, 5, 0)
    with pytest.raises(ValueError, match="'short'.*outside the 5 tokens"):
        _build([_chunk(req, 4, 2, rng)])
    req.block_ids = [3]  # one block of 4 cannot hold 5 tokens
    with pytest.raises(ValueError, match="'short'.*1 blocks of 4 cannot hold 5"):
        _build([ScheduledChunk(req, 1)])
    req.block_ids = [3, 99]
    with pytest.raises(ValueError, match="block_ids"):
        _build([ScheduledChunk(req, 1)])


def test_pack_batch_rejects_tokens_that_do_not_match_q_lens() -> None:
    with pytest.raises(ValueError, match="token_ids: 2 tokens but q_lens add up to 3"):
        pack_batch(
            token_ids=[1, 2],
            starts=[0],
            q_lens=[3],
            block_tables=[[0]],
            sampled=[0],
            block_size=BS,
            device=CPU,
        )
