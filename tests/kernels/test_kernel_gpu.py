"""The compiled kernels on a GPU at serving shapes (run with `pytest -m gpu tests/kernels`)."""

from __future__ import annotations

import pytest
import torch

from kernels import checks, reference
from kernels.lora_meta import prepare_lora_batch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or checks.interpreting(),
        reason="needs a CUDA GPU and compiled (not interpreted) Triton",
    ),
]
BF16_TOL = 2e-2


def _to_cuda(batch):
    return [t.cuda() for t in batch]


def test_decode_llama_shape_auto_splits(paged_batch):
    from kernels.attention_decode import paged_attention_decode

    seq_lens = [1, 17, 1000, 4097, 300]
    b = paged_batch(0, [1] * 5, seq_lens, heads=(32, 8), head_dim=128, dtype=torch.bfloat16)
    q, k, v, bt, qsl, sl = _to_cuda(
        [b.query, b.k_cache, b.v_cache, b.block_tables, b.query_start_loc, b.seq_lens]
    )
    out = paged_attention_decode(q, k, v, bt, sl, 128**-0.5, max_seq_len=max(seq_lens))
    ref = reference.paged_attention_ref(q, k, v, bt, qsl, sl, 128**-0.5)
    torch.testing.assert_close(out.float(), ref.float(), atol=BF16_TOL, rtol=BF16_TOL)


def test_decode_replays_in_a_cuda_graph(paged_batch):
    from kernels.attention_decode import paged_attention_decode

    b = paged_batch(1, [1] * 4, [64, 900, 5, 2000], heads=(32, 8), head_dim=128,
                    dtype=torch.float16)  # fmt: skip
    q, k, v, bt, qsl, sl = _to_cuda(
        [b.query, b.k_cache, b.v_cache, b.block_tables, b.query_start_loc, b.seq_lens]
    )
    out = torch.empty_like(q)

    def step() -> None:
        paged_attention_decode(q, k, v, bt, sl, 0.1, max_seq_len=2048, num_splits=8, out=out)

    step()  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    # New lengths (within each request's blocks) and queries, replayed with the same launch.
    sl.copy_(torch.tensor([60, 850, 3, 1999], dtype=torch.int32))
    q.copy_(torch.randn_like(q))
    graph.replay()
    ref = reference.paged_attention_ref(q, k, v, bt, qsl, sl, 0.1)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-3, rtol=2e-3)


def test_prefill_chunk_after_cached_prefix(paged_batch):
    from kernels.attention_prefill import paged_attention_prefill

    q_lens, seq_lens = [200, 1, 77], [200, 513, 1077]
    b = paged_batch(2, q_lens, seq_lens, heads=(32, 8), head_dim=128, dtype=torch.bfloat16)
    q, k, v, bt, qsl, sl = _to_cuda(
        [b.query, b.k_cache, b.v_cache, b.block_tables, b.query_start_loc, b.seq_lens]
    )
    out = paged_attention_prefill(q, k, v, bt, qsl, sl, 0.08, max_query_len=200)
    ref = reference.paged_attention_ref(q, k, v, bt, qsl, sl, 0.08)
    torch.testing.assert_close(out.float(), ref.float(), atol=BF16_TOL, rtol=BF16_TOL)


def test_write_kv_and_rms_norm_bf16():
    from kernels.kv_write import write_kv
    from kernels.rms_norm import rms_norm

    key = torch.randn(50, 8, 128, device="cuda", dtype=torch.bfloat16)
    slots = torch.randperm(64 * 16, device="cuda")[:50]
    slots[::7] = -1
    caches = [torch.zeros(64, 16, 8, 128, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
    write_kv(key, key, caches[0], caches[1], slots)
    reference.write_kv_ref(key, key, caches[2], caches[3], slots)
    assert torch.equal(caches[0], caches[2])
    x = torch.randn(33, 4096, device="cuda", dtype=torch.bfloat16)
    res = torch.randn_like(x)
    w = torch.randn(4096, device="cuda", dtype=torch.bfloat16)
    out, new_res = rms_norm(x, w, 1e-5, res)
    ref_out, ref_res = reference.rms_norm_ref(x, w, 1e-5, res)
    assert torch.equal(new_res, ref_res)
    torch.testing.assert_close(out, ref_out, atol=3e-2, rtol=1e-2)


@pytest.mark.parametrize("slots_kind", ["decode", "prefill"])
def test_lora_group_mixed_ranks(slots_kind):
    from kernels.lora import add_lora
    from kernels.lora_meta import LoRAWeights

    in_dim, out_dims, ranks = 1024, [1024, 256, 256], [8, 16, 64, 16, 8]
    gen = torch.Generator().manual_seed(0)
    s, p, width = len(ranks), len(out_dims), max(ranks)
    n_rows = 2 * p * sum(ranks) + 3
    free = torch.randperm(n_rows, generator=gen).tolist()
    a_off = torch.zeros(s, p, width, dtype=torch.int64)
    b_off = torch.zeros(s, p, width, dtype=torch.int64)
    for slot, r in enumerate(ranks):
        for j in range(r * p):
            a_off[slot, j // r, j % r] = free.pop() * in_dim
            b_off[slot, j // r, j % r] = free.pop() * in_dim
    pool = (torch.randn(n_rows, in_dim, generator=gen) * 0.05).bfloat16().cuda()
    w = LoRAWeights(pool, a_off.cuda(), pool, b_off.cuda(),
                    torch.tensor(ranks, dtype=torch.int32)[:, None].repeat(1, p).cuda(),
                    torch.full((s, p), 2.0).cuda())  # fmt: skip
    if slots_kind == "decode":
        token_slots = torch.randint(-1, s, (128,), generator=gen)
    else:
        token_slots = torch.tensor([3] * 300 + [-1] * 40 + [0] * 90 + [4] * 17)
    token_slots = token_slots.int().cuda()
    t = token_slots.shape[0]
    x = torch.randn(t, in_dim, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(t, sum(out_dims), device="cuda", dtype=torch.bfloat16)
    y_twin = y.clone()
    add_lora(y, x, w, prepare_lora_batch(token_slots, s), out_dims)
    reference.lora_ref(y_twin, x, w.a_pool, w.a_offsets, w.b_pool, w.b_offsets, w.ranks,
                       w.scales, token_slots, out_dims)  # fmt: skip
    torch.testing.assert_close(y.float(), y_twin.float(), atol=5e-2, rtol=2e-2)
