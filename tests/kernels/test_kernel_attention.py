"""Paged attention kernels (decode split-K and varlen prefill) against the torch twin."""

from __future__ import annotations

import pytest
import torch

from kernels import ops, reference
from kernels.attention_decode import paged_attention_decode
from kernels.attention_prefill import paged_attention_prefill

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _ref(b):
    return reference.paged_attention_ref(
        b.query, b.k_cache, b.v_cache, b.block_tables, b.query_start_loc, b.seq_lens, 0.1
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_matches_twin_ragged(paged_batch, tol, dtype, num_splits):
    # Ragged lengths: a 1-token context, a partial block, an exact block, a long one.
    seq_lens = [1, 23, 32, 150]
    b = paged_batch(num_splits, [1] * 4, seq_lens, heads=(8, 2), dtype=dtype)
    out = paged_attention_decode(
        b.query, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, 0.1,
        max_seq_len=max(seq_lens), num_splits=num_splits,
    )  # fmt: skip
    torch.testing.assert_close(out.float(), _ref(b).float(), atol=tol(dtype), rtol=tol(dtype))


@pytest.mark.parametrize("head_dim,heads,block_size", [(128, (4, 4), 8), (64, (6, 1), 32)])
def test_decode_head_dims_and_groups(paged_batch, tol, head_dim, heads, block_size):
    seq_lens = [70, 5, 129]
    b = paged_batch(7, [1] * 3, seq_lens, heads=heads, head_dim=head_dim, block_size=block_size)
    out = paged_attention_decode(
        b.query, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, 0.1,
        max_seq_len=200, num_splits=4,
    )  # fmt: skip
    tl = tol(torch.float32)
    torch.testing.assert_close(out, _ref(b), atol=tl, rtol=tl)


def test_decode_zero_length_row_is_zero_and_splits_past_the_end_are_ignored(paged_batch):
    # max_seq_len far above every length: most splits are empty for every row.
    b = paged_batch(3, [1, 1], [0, 20], share_prefix=False)
    out = paged_attention_decode(
        b.query, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, 0.1,
        max_seq_len=1024, num_splits=8,
    )  # fmt: skip
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    torch.testing.assert_close(out[1:], _ref(b)[1:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_prefill_with_cached_prefix_matches_twin(paged_batch, tol, dtype):
    # Request 0: fresh prompt. 1: chunk after 40 cached tokens (prefix hit / chunked prefill).
    # 2: a decode row in the same batch. 3: a chunk longer than one query tile.
    q_lens = [9, 7, 1, 21]
    seq_lens = [9, 47, 30, 37]
    b = paged_batch(11, q_lens, seq_lens, dtype=dtype)
    out = paged_attention_prefill(
        b.query, b.k_cache, b.v_cache, b.block_tables, b.query_start_loc, b.seq_lens, 0.1,
        max_query_len=max(q_lens),
    )  # fmt: skip
    torch.testing.assert_close(out.float(), _ref(b).float(), atol=tol(dtype), rtol=tol(dtype))


def test_prefill_empty_request_and_head_dim_128(paged_batch, tol):
    b = paged_batch(5, [0, 18], [16, 18], head_dim=128, heads=(2, 1), block_size=8)
    out = paged_attention_prefill(
        b.query, b.k_cache, b.v_cache, b.block_tables, b.query_start_loc, b.seq_lens, 0.1,
        max_query_len=18,
    )  # fmt: skip
    torch.testing.assert_close(out, _ref(b), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("q_lens,seq_lens", [([1, 1, 1], [5, 40, 17]), ([3, 1], [3, 20])])
def test_ops_dispatch_triton_equals_torch(paged_batch, monkeypatch, q_lens, seq_lens):
    b = paged_batch(2, q_lens, seq_lens)
    args = (b.query, b.k_cache, b.v_cache, b.block_tables, b.query_start_loc, b.seq_lens, 0.1)
    kw = {"max_query_len": max(q_lens), "max_seq_len": max(seq_lens)}
    monkeypatch.setenv("FLEETLM_KERNELS", "torch")
    twin = ops.paged_attention(*args, **kw)
    monkeypatch.setenv("FLEETLM_KERNELS", "triton")
    kernel = ops.paged_attention(*args, **kw, num_splits=2)
    torch.testing.assert_close(kernel, twin, atol=1e-5, rtol=1e-5)
