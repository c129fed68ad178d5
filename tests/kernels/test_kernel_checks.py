"""Launchers (and the ops twin path) reject bad input with a ValueError naming the argument."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kernels import ops
from kernels.attention_decode import paged_attention_decode
from kernels.attention_prefill import paged_attention_prefill
from kernels.kv_write import write_kv
from kernels.lora import add_lora
from kernels.lora_meta import LoRAWeights, prepare_lora_batch, validate_lora_tables
from kernels.rms_norm import rms_norm


def _attn_inputs():
    q = torch.randn(2, 4, 16)
    k = torch.randn(5, 4, 2, 16)
    v = torch.randn(5, 4, 2, 16)
    bt = torch.tensor([[0, 1], [2, -1]], dtype=torch.int32)
    sl = torch.tensor([6, 3], dtype=torch.int32)
    return q, k, v, bt, sl


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda a: {**a, "q": a["q"].half()}, "k_cache"),
        (lambda a: {**a, "q": torch.randn(2, 3, 16)}, "query"),  # 3 heads over 2 KV heads
        (lambda a: {**a, "q": torch.randn(2, 4, 32)[..., ::2]}, "query"),  # last stride 2
        (lambda a: {**a, "q": torch.randn(2, 4, 24)}, "query"),  # head_dim not a power of 2
        (lambda a: {**a, "k": torch.randn(5, 3, 2, 16)}, "k_cache"),  # block size 3
        (lambda a: {**a, "v": torch.randn(6, 4, 2, 16)}, "v_cache"),
        (lambda a: {**a, "bt": a["bt"].float()}, "block_tables"),
        (lambda a: {**a, "bt": a["bt"][:1]}, "block_tables"),
        (lambda a: {**a, "sl": a["sl"][:1]}, "seq_lens"),
        (lambda a: {**a, "scale": 0.0}, "scale"),
        (lambda a: {**a, "q": [[1.0]]}, "query"),
    ],
)
def test_decode_rejects(mutate, field):
    q, k, v, bt, sl = _attn_inputs()
    a = mutate({"q": q, "k": k, "v": v, "bt": bt, "sl": sl, "scale": 0.25})
    with pytest.raises(ValueError, match=field):
        paged_attention_decode(a["q"], a["k"], a["v"], a["bt"], a["sl"], a["scale"], max_seq_len=8)


def test_prefill_rejects_bad_query_start_loc():
    q, k, v, bt, sl = _attn_inputs()
    with pytest.raises(ValueError, match="query_start_loc"):
        paged_attention_prefill(q, k, v, bt, torch.tensor([0, 2], dtype=torch.int32), sl, 0.2,
                                max_query_len=1)  # fmt: skip


@pytest.mark.parametrize(
    "qsl,sl,bt,field",
    [
        ([0, 2, 1], [6, 3], [[0, 1], [2, -1]], "query_start_loc"),  # decreasing
        ([0, 1, 2], [6, 9], [[0, 1], [2, -1]], "seq_lens"),  # 9 > 2 blocks of 4
        ([0, 1, 2], [6, 3], [[0, 7], [2, -1]], "block_tables"),  # block 7 of 5
        ([0, 1, 2], [6, 3], [[0, -1], [2, -1]], "block_tables"),  # hole inside the length
    ],
)
def test_torch_path_checks_values(monkeypatch, qsl, sl, bt, field):
    monkeypatch.setenv("FLEETLM_KERNELS", "torch")
    q, k, v, _, _ = _attn_inputs()
    with pytest.raises(ValueError, match=field):
        ops.paged_attention(
            q, k, v, torch.tensor(bt, dtype=torch.int32), torch.tensor(qsl, dtype=torch.int32),
            torch.tensor(sl, dtype=torch.int32), 0.2, max_query_len=1, max_seq_len=9,
        )  # fmt: skip


def test_unknown_backend_is_rejected(monkeypatch):
    monkeypatch.setenv("FLEETLM_KERNELS", "cuda")
    with pytest.raises(ValueError, match="FLEETLM_KERNELS"):
        ops.rms_norm(torch.ones(1, 4), torch.ones(4), 1e-6)


def test_write_kv_rejects():
    key = torch.randn(3, 2, 16)
    cache = torch.zeros(2, 4, 2, 16)
    with pytest.raises(ValueError, match="slot_mapping"):
        write_kv(key, key, cache, cache.clone(), torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="k_cache"):
        write_kv(key, key, torch.zeros(2, 4, 3, 16), torch.zeros(2, 4, 3, 16),
                 torch.zeros(3, dtype=torch.int32))  # fmt: skip
    with pytest.raises(ValueError, match="v_cache"):
        write_kv(key, key, cache, cache.half(), torch.zeros(3, dtype=torch.int32))


def test_write_kv_torch_path_rejects_slot_past_cache(monkeypatch):
    monkeypatch.setenv("FLEETLM_KERNELS", "torch")
    key = torch.randn(1, 2, 16)
    cache = torch.zeros(2, 4, 2, 16)
    with pytest.raises(ValueError, match="slot_mapping"):
        ops.write_kv(key, key, cache, cache.clone(), torch.tensor([8]))


def test_rms_norm_rejects():
    with pytest.raises(ValueError, match="weight"):
        rms_norm(torch.ones(2, 8), torch.ones(7), 1e-6)
    with pytest.raises(ValueError, match="residual"):
        rms_norm(torch.ones(2, 8), torch.ones(8), 1e-6, torch.ones(2, 8).half())
    with pytest.raises(ValueError, match="eps"):
        rms_norm(torch.ones(2, 8), torch.ones(8), 0.0)


def _lora():
    pool = torch.randn(64, 16)
    offs = (torch.arange(4, dtype=torch.int64) * 16).view(1, 1, 4).repeat(2, 1, 1)
    w = LoRAWeights(pool, offs, pool, offs + 256, torch.tensor([[4], [2]], dtype=torch.int32),
                    torch.ones(2, 1))  # fmt: skip
    return w, prepare_lora_batch(torch.tensor([0, 1, -1], dtype=torch.int32), 2)


@pytest.mark.parametrize(
    "change,field",
    [
        ({"a_offsets": torch.zeros(2, 1, 4, dtype=torch.int32)}, "a_offsets"),
        ({"b_offsets": torch.zeros(2, 1, 3, dtype=torch.int64)}, "b_offsets"),
        ({"ranks": torch.ones(2, 2, dtype=torch.int32)}, "ranks"),
        ({"scales": torch.ones(2, 1, dtype=torch.float64)}, "scales"),
        ({"a_pool": torch.randn(64, 32)[:, ::2]}, "a_pool"),
        ({"b_pool": torch.randn(64, 16).half()}, "b_pool"),
    ],
)
def test_lora_rejects_bad_tables(change, field):
    w, batch = _lora()
    with pytest.raises(ValueError, match=field):
        add_lora(torch.zeros(3, 16), torch.randn(3, 16), dataclasses.replace(w, **change), batch,
                 [16])  # fmt: skip


def test_lora_rejects_bad_shapes():
    w, batch = _lora()
    with pytest.raises(ValueError, match="out_dims"):
        add_lora(torch.zeros(3, 16), torch.randn(3, 16), w, batch, [8, 8])
    with pytest.raises(ValueError, match="y"):
        add_lora(torch.zeros(3, 8), torch.randn(3, 16), w, batch, [16])
    with pytest.raises(ValueError, match="batch"):
        add_lora(torch.zeros(2, 16), torch.randn(2, 16), w, batch, [16])


def test_validate_tables_finds_rows_outside_the_pool():
    w, _ = _lora()
    validate_lora_tables(w, 16, [16])
    bad = w.b_offsets.clone()
    bad[1, 0, 1] = 64 * 16 - 8  # row 1 of slot 1 (rank 2) runs past the pool's end
    with pytest.raises(ValueError, match="b_offsets"):
        validate_lora_tables(dataclasses.replace(w, b_offsets=bad), 16, [16])
    with pytest.raises(ValueError, match="ranks"):
        validate_lora_tables(dataclasses.replace(w, ranks=w.ranks + 3), 16, [16])
    misaligned = w.a_offsets.clone()
    misaligned[0, 0, 0] = 4  # in_dim 16 is a multiple of 8, so every A row must start on one
    with pytest.raises(ValueError, match="multiples of 8"):
        validate_lora_tables(dataclasses.replace(w, a_offsets=misaligned), 16, [16])
