"""The vectorized torch paged attention (kernels/torch_paged.py) against the per-request twin."""

from __future__ import annotations

import pytest
import torch

from kernels import ops, reference
from kernels.torch_paged import PlanShape, paged_attention_torch, plan_groups, split_rows

SCALE = 0.125


def run_both(b, **kw: int) -> tuple[torch.Tensor, torch.Tensor]:
    args = (b.query, b.k_cache, b.v_cache, b.block_tables, b.query_start_loc, b.seq_lens, SCALE)
    return paged_attention_torch(*args, **kw), reference.paged_attention_ref(*args)


def assert_matches(b, tol, dtype: torch.dtype, **kw: int) -> None:
    out, ref = run_both(b, **kw)
    assert out.dtype == ref.dtype == dtype and out.shape == ref.shape
    torch.testing.assert_close(out.float(), ref.float(), atol=tol(dtype), rtol=tol(dtype))


# (q_lens, seq_lens): decode only, prefill only, mixed, prefix-cached chunk offsets.
BATCHES = {
    "decode": ([1, 1, 1, 1, 1], [1, 16, 23, 70, 129]),
    "prefill": ([7, 16, 33], [7, 16, 33]),
    "mixed": ([1, 20, 1, 5], [50, 20, 17, 5]),
    "cached_prefix": ([3, 17, 1, 40], [40, 57, 9, 72]),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (8, 2)])  # GQA groups 1, 2, 4
@pytest.mark.parametrize("kind", sorted(BATCHES))
def test_matches_twin_on_ragged_batches(paged_batch, tol, dtype, heads, kind):
    q_lens, seq_lens = BATCHES[kind]
    # make_paged_batch: shuffled blocks, -1 holes past every length, request 1 shares request
    # 0's first block when both fill one.
    b = paged_batch(len(kind), q_lens, seq_lens, heads=heads, head_dim=32, dtype=dtype)
    assert (b.block_tables == -1).any()
    assert_matches(b, tol, dtype)


def test_shared_blocks_and_holes(paged_batch, tol):
    b = paged_batch(5, [1, 4, 2], [40, 36, 20], heads=(4, 2), head_dim=16)
    tables = b.block_tables.clone()
    tables[2, :2] = tables[0, :2]  # three requests read the same first block
    tables[2, 2:] = -1
    b = type(b)(**{**b.__dict__, "block_tables": tables})
    assert_matches(b, tol, torch.float32)


def test_garbage_past_the_length_never_leaks(paged_batch, tol):
    # NaN/inf in slots past each request's length (a stale block tail, or block 0, which the -1
    # holes are redirected to) must not reach the output: the twin never reads them.
    b = paged_batch(9, [1, 3, 1], [5, 20, 33], heads=(4, 2), head_dim=16, share_prefix=False)
    nan_block = torch.full((1, *b.k_cache.shape[1:]), float("nan"))
    k_cache, v_cache = torch.cat([nan_block, b.k_cache]), torch.cat([nan_block, b.v_cache])
    tables = torch.where(b.block_tables >= 0, b.block_tables + 1, -1)  # block 0: nobody's
    bs = k_cache.shape[1]
    for i, s in enumerate(b.seq_lens.tolist()):
        last = int(tables[i, (s - 1) // bs])
        k_cache[last, (s - 1) % bs + 1 :] = float("nan")
        v_cache[last, (s - 1) % bs + 1 :] = float("inf")
    assert (tables == -1).any()
    b = type(b)(**{**b.__dict__, "k_cache": k_cache, "v_cache": v_cache, "block_tables": tables})
    out, ref = run_both(b)
    assert torch.isfinite(out).all() and torch.isfinite(ref).all()
    torch.testing.assert_close(out, ref, atol=tol(torch.float32), rtol=tol(torch.float32))


@pytest.mark.parametrize("budget", [1, 4096, 40_000])
def test_groups_and_row_pieces_give_the_same_result(paged_batch, tol, budget):
    # A tiny budget makes every group one piece and cuts the 48-row prefill into row pieces.
    b = paged_batch(11, [1, 48, 1, 9, 1], [30, 60, 90, 9, 2], heads=(8, 2), head_dim=16)
    assert_matches(b, tol, torch.float32, max_group_elems=budget)


def test_empty_requests_and_unowned_rows_are_zero(paged_batch):
    # Request 1 has no rows this step; row 4 belongs to no request (query_start_loc ends at 4).
    b = paged_batch(13, [2, 0, 2], [10, 12, 8], heads=(4, 2), head_dim=16)
    query = torch.cat([b.query, torch.randn(1, 4, 16)])
    args = (query, b.k_cache, b.v_cache, b.block_tables, b.query_start_loc, b.seq_lens, SCALE)
    out = paged_attention_torch(*args)
    ref = reference.paged_attention_ref(*args)
    torch.testing.assert_close(out[:4], ref[:4], atol=1e-5, rtol=1e-5)
    assert torch.equal(out[4], torch.zeros_like(out[4]))


def test_plan_bounds_every_group_and_covers_every_row():
    shape = PlanShape(block_size=16, heads_q=8, kv_row=64, max_group_elems=50_000)
    starts, q_lens, seq_lens = [0, 1, 201, 202, 202], [1, 200, 1, 0, 3], [64, 300, 17, 5, 3]
    pieces = split_rows(starts, q_lens, seq_lens, shape)
    rows = sorted(r for p in pieces for r in range(p.row, p.row + p.q_len))
    assert rows == list(range(205))  # every row once; request 3 has none
    for p in pieces:  # a piece is the tail of its request's context up to its last row
        req_end = starts[p.req] + q_lens[p.req]
        assert p.seq_len == seq_lens[p.req] - (req_end - (p.row + p.q_len))
    groups = plan_groups(pieces, shape)
    assert sorted((p for g in groups for p in g), key=str) == sorted(pieces, key=str)
    for g in groups:
        cost = shape.cost(len(g), max(p.q_len for p in g), max(p.seq_len for p in g))
        assert cost <= shape.max_group_elems
    assert len(groups) > 1


def test_ops_runs_it_on_cpu_and_keeps_the_value_checks(paged_batch, monkeypatch):
    monkeypatch.setenv("FLEETLM_KERNELS", "torch")
    b = paged_batch(17, [1, 3], [20, 40], heads=(4, 2), head_dim=16)
    args = (b.query, b.k_cache, b.v_cache, b.block_tables, b.query_start_loc, b.seq_lens, SCALE)
    out = ops.paged_attention(*args, max_query_len=3, max_seq_len=40)
    torch.testing.assert_close(out, paged_attention_torch(*args), atol=0, rtol=0)
    bad = b.block_tables.clone()
    bad[1, 0] = b.k_cache.shape[0]
    with pytest.raises(ValueError, match="block_tables"):
        ops.paged_attention(*args[:3], bad, *args[4:], max_query_len=3, max_seq_len=40)
