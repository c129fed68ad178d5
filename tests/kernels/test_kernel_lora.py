"""Multi-LoRA shrink/expand against the per-adapter torch twin, on a paged, shuffled pool."""

from __future__ import annotations

import pytest
import torch

from kernels import ops, reference
from kernels.lora import add_lora, lora_expand, lora_shrink
from kernels.lora_meta import BLOCK_M, LoRAWeights, prepare_lora_batch

IN_DIM = 40  # not a multiple of the K tile: exercises the tail mask
OUT_DIMS = [32, 16, 24]  # a q, k, v-like group with different widths


def make_weights(
    seed: int, ranks: list[list[int]], dtype: torch.dtype, in_dim: int = IN_DIM
) -> LoRAWeights:
    """Slots x projections ranks; every rank-row lands at a random row of a shared flat pool."""
    gen = torch.Generator().manual_seed(seed)
    s, p = len(ranks), len(ranks[0])
    width = max(max(r) for r in ranks)
    row_len = max(in_dim, *OUT_DIMS[:p])  # one pool "page" per rank-row, padded to the longest
    n_rows = sum(2 * sum(r) for r in ranks) + 5  # A rows + B rows + spare rows
    free = torch.randperm(n_rows, generator=gen).tolist()
    a_off = torch.zeros(s, p, width, dtype=torch.int64)
    b_off = torch.zeros(s, p, width, dtype=torch.int64)
    for slot, proj_ranks in enumerate(ranks):
        for proj, r in enumerate(proj_ranks):
            for j in range(r):
                a_off[slot, proj, j] = free.pop() * row_len
                b_off[slot, proj, j] = free.pop() * row_len
    pool = (torch.randn(n_rows, row_len, generator=gen) * 0.2).to(dtype)
    return LoRAWeights(
        a_pool=pool,
        a_offsets=a_off,
        b_pool=pool,  # A and B share one pool, as pages lent by a single allocator would
        b_offsets=b_off,
        ranks=torch.tensor(ranks, dtype=torch.int32),
        scales=torch.rand(s, p, generator=gen) + 0.5,
    )


def run_both(weights, slots, dtype, seed=0, out_dims=OUT_DIMS):
    gen = torch.Generator().manual_seed(seed)
    t = len(slots)
    x = torch.randn(t, IN_DIM, generator=gen).to(dtype)
    y0 = torch.randn(t, sum(out_dims) + 3, generator=gen).to(dtype)
    token_slots = torch.tensor(slots, dtype=torch.int32)
    y_kernel, y_twin = y0.clone(), y0.clone()
    batch = prepare_lora_batch(token_slots, weights.ranks.shape[0])
    add_lora(y_kernel, x, weights, batch, out_dims)
    w = weights
    reference.lora_ref(
        y_twin, x, w.a_pool, w.a_offsets, w.b_pool, w.b_offsets, w.ranks, w.scales,
        token_slots, list(out_dims),
    )  # fmt: skip
    return y0, y_kernel, y_twin


# Slots 0..3 have ranks 8, 16, 64, 16; slot 3 targets only q and v (k rank 0).
MIXED_RANKS = [[8, 8, 8], [16, 16, 16], [64, 64, 64], [16, 0, 16]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_decode_batch_mixed_ranks_base_rows_repeats(tol, dtype):
    slots = [2, -1, 0, 2, 1, -1, 3, 0, 2]  # base-only rows and repeated adapters
    weights = make_weights(1, MIXED_RANKS, dtype)
    y0, y_kernel, y_twin = run_both(weights, slots, dtype)
    torch.testing.assert_close(y_kernel.float(), y_twin.float(), atol=tol(dtype), rtol=tol(dtype))
    base = [i for i, s in enumerate(slots) if s < 0]
    assert torch.equal(y_kernel[base], y0[base])  # base-only rows are untouched
    assert torch.equal(y_kernel[:, sum(OUT_DIMS) :], y0[:, sum(OUT_DIMS) :])  # past the slices
    assert not torch.equal(y_kernel, y0)


def test_prefill_segments_longer_than_a_tile(tol):
    # Segments of 37, 20 and 5 tokens: several work items per adapter, a partial last tile.
    slots = [1] * 37 + [-1] * 3 + [2] * 20 + [0] * 5
    weights = make_weights(2, MIXED_RANKS, torch.float16)
    _, y_kernel, y_twin = run_both(weights, slots, torch.float16, seed=3)
    atol = tol(torch.float16)
    torch.testing.assert_close(y_kernel.float(), y_twin.float(), atol=atol, rtol=atol)


def test_single_projection_group_and_split_k():
    weights = make_weights(3, [[16], [8]], torch.float32)
    slots = torch.tensor([1, 0, 0, -1], dtype=torch.int32)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(4, IN_DIM, generator=gen)
    batch = prepare_lora_batch(slots, 2)
    s_one = lora_shrink(x, weights, batch, split_k=1)
    s_split = lora_shrink(x, weights, batch, split_k=3)  # 3 in_dim chunks of 16, 16, 8
    assert s_one.shape[0] == 1 and s_split.shape[0] == 3
    # Defined entries: adapter tokens (0, 1, 2) and j < their rank (8, 16, 16).
    for tok, rank in ((0, 8), (1, 16), (2, 16)):
        torch.testing.assert_close(s_split[:, tok, 0, :rank].sum(0), s_one[0, tok, 0, :rank])
    y = torch.zeros(4, 32)
    lora_expand(y, s_one, weights, batch, [32])
    y_twin = torch.zeros(4, 32)
    w = weights
    reference.lora_ref(
        y_twin, x, w.a_pool, w.a_offsets, w.b_pool, w.b_offsets, w.ranks, w.scales, slots, [32]
    )
    torch.testing.assert_close(y, y_twin, atol=1e-5, rtol=1e-5)


def test_prepare_batch_covers_every_adapter_token_once():
    slots = torch.tensor([3, -1, 0] + [2] * 35 + [0, 3, -1], dtype=torch.int32)
    batch = prepare_lora_batch(slots, 5)
    assert batch.num_work == -(-41 // BLOCK_M) + 5
    seen: list[int] = []
    for slot, start, rows in zip(
        batch.work_slot.tolist(), batch.work_start.tolist(), batch.work_rows.tolist(), strict=True
    ):
        assert 0 <= rows <= BLOCK_M
        tokens = batch.sorted_tokens[start : start + rows].tolist()
        assert all(int(slots[t]) == slot for t in tokens)
        seen += tokens
    assert sorted(seen) == [i for i, s in enumerate(slots.tolist()) if s >= 0]


def test_ops_dispatch_triton_equals_torch(monkeypatch):
    weights = make_weights(5, MIXED_RANKS, torch.float32)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(6, IN_DIM, generator=gen)
    batch = ops.prepare_lora_batch(torch.tensor([0, 1, 2, 3, -1, 2], dtype=torch.int32), 4)
    ys = []
    for backend in ("torch", "triton"):
        monkeypatch.setenv("FLEETLM_KERNELS", backend)
        y = torch.zeros(6, sum(OUT_DIMS))
        ops.add_lora(y, x, weights, batch, OUT_DIMS)
        ys.append(y)
    torch.testing.assert_close(ys[1], ys[0], atol=1e-5, rtol=1e-5)
