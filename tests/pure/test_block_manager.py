"""Block manager: accounting, prefix sharing, hashing, LRU eviction, swap. No tensors."""

from __future__ import annotations

import pytest

from actors.common.sampling_params import SamplingParams
from actors.engine.block_manager import BlockManager
from actors.engine.request import Request
from policies.prefix import block_hashes

BS = 4


def make_req(rid: str, prompt: list[int], adapter_id: str | None = None) -> Request:
    return Request(rid, list(prompt), SamplingParams(max_tokens=8), adapter_id=adapter_id)


def compute(bm: BlockManager, req: Request, num_tokens: int) -> None:
    """Allocate and 'run' num_tokens more tokens of req, as the scheduler and update() would."""
    assert bm.allocate_slots(req, num_tokens)
    req.num_computed_tokens += num_tokens
    bm.cache_full_blocks(req, req.num_computed_tokens)


def admit(bm: BlockManager, req: Request) -> int:
    """Admit req with its prefix-cache hits and compute the rest of its prompt; returns hits."""
    hit, num_hit = bm.get_computed_blocks(req)
    assert bm.allocate_slots(req, req.num_tokens - num_hit, hit)
    req.num_computed_tokens = req.num_tokens
    bm.cache_full_blocks(req, req.num_computed_tokens)
    return num_hit


def assert_idle(bm: BlockManager) -> None:
    assert all(bm.ref_count(b) == 0 for b in range(bm.num_total_blocks))
    assert bm.num_free_blocks == bm.num_total_blocks
    assert bm.num_free_host_blocks == bm.num_host_blocks


def test_allocation_accounting_returns_to_zero() -> None:
    bm = BlockManager(8, BS, enable_prefix_caching=True)
    a, b = make_req("a", range(10)), make_req("b", range(100, 103))
    compute(bm, a, 10)  # 3 blocks
    compute(bm, b, 3)  # 1 block
    assert len(a.block_ids) == 3 and len(b.block_ids) == 1
    assert bm.num_free_blocks == 4
    assert bm.usage == pytest.approx(0.5)
    compute(bm, a, 2)  # 12 tokens still fit 3 blocks
    assert len(a.block_ids) == 3
    bm.free(a)
    bm.free(b)
    assert a.block_ids == [] and b.block_ids == []
    assert_idle(bm)


def test_allocate_fails_without_change_when_full() -> None:
    bm = BlockManager(3, BS, enable_prefix_caching=False)
    a = make_req("a", range(8))
    compute(bm, a, 8)
    before = list(a.block_ids)
    assert not bm.allocate_slots(a, 5)  # 13 tokens need 4 blocks
    assert a.block_ids == before and bm.num_free_blocks == 1
    assert bm.allocate_slots(a, 4)
    assert bm.num_free_blocks == 0


def test_blocks_needed() -> None:
    bm = BlockManager(4, BS)
    assert [bm.blocks_needed(n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_bad_sizes_name_the_field() -> None:
    with pytest.raises(ValueError, match="num_blocks"):
        BlockManager(0, BS)
    with pytest.raises(ValueError, match="block_size"):
        BlockManager(4, 0)
    with pytest.raises(ValueError, match="num_host_blocks"):
        BlockManager(4, BS, num_host_blocks=-1)


def test_same_prompt_shares_full_blocks() -> None:
    bm = BlockManager(16, BS)
    prompt = list(range(14))  # 3 full blocks and a partial one
    a, b = make_req("a", prompt), make_req("b", prompt)
    assert admit(bm, a) == 0
    assert admit(bm, b) == 12
    assert a.block_ids[:3] == b.block_ids[:3]
    assert a.block_ids[3] != b.block_ids[3]  # the partial block is never shared
    assert [bm.ref_count(x) for x in a.block_ids] == [2, 2, 2, 1]
    assert bm.num_free_blocks == 16 - 5
    bm.free(a)
    assert [bm.ref_count(x) for x in b.block_ids] == [1, 1, 1, 1]
    bm.free(b)
    assert_idle(bm)


def test_hit_never_covers_the_whole_prompt() -> None:
    bm = BlockManager(16, BS)
    prompt = list(range(8))  # exactly 2 full blocks
    assert admit(bm, make_req("a", prompt)) == 0
    b = make_req("b", prompt)
    hit, num_hit = bm.get_computed_blocks(b)
    assert num_hit == 4 and len(hit) == 1  # one block left so the last token yields logits
    one = make_req("c", prompt[:4])
    assert bm.get_computed_blocks(one) == ([], 0)


def test_hashes_follow_the_shared_definition_and_the_adapter() -> None:
    bm = BlockManager(16, BS)
    prompt = list(range(9))
    plain, lora = make_req("a", prompt), make_req("b", prompt, adapter_id="sql@3")
    admit(bm, plain)
    assert admit(bm, lora) == 0  # same tokens, different adapter: no sharing
    assert [bm.block_hash_of(x) for x in plain.block_ids[:2]] == block_hashes(prompt, BS)
    lora_hashes = [bm.block_hash_of(x) for x in lora.block_ids[:2]]
    assert lora_hashes == block_hashes(prompt, BS, "sql@3")
    assert set(lora_hashes).isdisjoint(block_hashes(prompt, BS))
    assert bm.get_computed_blocks(make_req("c", prompt, adapter_id="sql@3"))[1] == 8


def test_freed_blocks_stay_cached_and_evict_lru_tail_first() -> None:
    bm = BlockManager(6, BS)
    a, b = make_req("a", range(9)), make_req("b", range(50, 59))
    admit(bm, a)  # 2 hashed blocks + 1 partial
    admit(bm, b)
    bm.free(a)
    bm.free(b)
    assert bm.num_free_blocks == 6 and bm.num_cached_free_blocks == 4
    # Unhashed blocks go first: the two partial ones cost no cached KV.
    filler = make_req("f", range(200, 216))
    compute(bm, filler, 8)
    assert bm.num_cached_free_blocks == 4
    probe_a, probe_b = make_req("pa", range(9)), make_req("pb", range(50, 59))
    assert bm.get_computed_blocks(probe_a)[1] == 8
    # Next eviction: a was freed first, and its tail block before its head.
    compute(bm, filler, 4)
    assert bm.get_computed_blocks(make_req("pa2", range(9)))[1] == 4
    assert bm.get_computed_blocks(probe_b)[1] == 8
    compute(bm, filler, 4)
    assert bm.get_computed_blocks(make_req("pa3", range(9)))[1] == 0
    summary = bm.cached_prefix_hashes(100)
    assert set(summary) == set(block_hashes(list(range(50, 59)), BS)) | set(
        block_hashes(list(range(200, 216)), BS)
    )
    assert bm.get_computed_blocks(make_req("pb2", range(50, 59)))[1] == 8
    bm.free(filler)
    assert all(bm.ref_count(x) == 0 for x in range(6))


def test_hit_on_a_cached_free_block_takes_it_off_the_free_pool() -> None:
    bm = BlockManager(3, BS)
    admit(bm, make_req("a", range(9)))
    bm.free(bm_req := make_req("x", []))  # freeing a request without blocks is harmless
    assert bm_req.block_ids == []
    b = make_req("b", range(9))
    hit, num_hit = bm.get_computed_blocks(b)
    assert num_hit == 8
    # a still holds its 3 blocks: nothing is free, so even hits plus one new block fail.
    assert not bm.allocate_slots(b, 1, hit)
    assert b.block_ids == [] and [bm.ref_count(x) for x in hit] == [1, 1]


def test_allocation_counts_reclaimed_hits() -> None:
    bm = BlockManager(3, BS)
    a = make_req("a", range(9))
    admit(bm, a)
    bm.free(a)  # 2 cached free + 1 plain free
    b = make_req("b", range(9))
    hit, num_hit = bm.get_computed_blocks(b)
    assert bm.allocate_slots(b, 1, hit)  # the 2 hits come off the pool, the plain one is new
    assert len(b.block_ids) == 3 and bm.num_free_blocks == 0
    c = make_req("c", range(9))
    hit_c, _ = bm.get_computed_blocks(c)
    assert not bm.allocate_slots(c, 1, hit_c)  # hits are shared but the third block is not there


def test_prefix_caching_disabled() -> None:
    bm = BlockManager(8, BS, enable_prefix_caching=False)
    admit(bm, make_req("a", range(9)))
    assert bm.get_computed_blocks(make_req("b", range(9))) == ([], 0)
    assert bm.cached_prefix_hashes(10) == []


def test_cached_prefix_hashes_lists_shallow_blocks_first() -> None:
    bm = BlockManager(32, BS)
    long_a, long_b = list(range(17)), list(range(100, 117))  # 4 full blocks each
    admit(bm, make_req("a", long_a))
    admit(bm, make_req("b", long_b))
    first = {block_hashes(long_a, BS)[0], block_hashes(long_b, BS)[0]}
    assert set(bm.cached_prefix_hashes(2)) == first
    summary = bm.cached_prefix_hashes(100)
    assert len(summary) == 8 and set(summary) >= first
    assert bm.cached_prefix_hashes(0) == []


def test_swap_out_and_in_round_trip() -> None:
    bm = BlockManager(4, BS, num_host_blocks=3)
    a = make_req("a", range(10))
    admit(bm, a)
    dev = list(a.block_ids)
    assert bm.can_swap_out(a)
    out = bm.swap_out(a)
    assert [d for d, _ in out] == dev
    assert a.block_ids == [h for _, h in out] and bm.is_swapped(a)
    assert bm.num_free_blocks == 4 and bm.num_free_host_blocks == 0
    with pytest.raises(ValueError, match="swapped out"):
        bm.allocate_slots(a, 1)
    b = make_req("b", range(50, 52))
    compute(bm, b, 2)
    back = bm.swap_in(a)
    assert [h for _, h in back] == [h for _, h in out]
    assert a.block_ids == [d for d, _ in back] and not bm.is_swapped(a)
    assert b.block_ids[0] not in a.block_ids
    assert bm.num_free_host_blocks == 3
    bm.free(a)
    bm.free(b)
    assert_idle(bm)


def test_swap_limits_raise_clear_errors() -> None:
    bm = BlockManager(4, BS, num_host_blocks=1)
    a = make_req("a", range(8))
    compute(bm, a, 8)
    assert not bm.can_swap_out(a)
    with pytest.raises(ValueError, match="swap space"):
        bm.swap_out(a)
    with pytest.raises(ValueError, match="not swapped"):
        bm.swap_in(a)
    c = make_req("c", range(3))
    compute(bm, c, 3)
    bm.swap_out(c)
    with pytest.raises(ValueError, match="already swapped"):
        bm.swap_out(c)
    filler = make_req("f", range(12))
    compute(bm, filler, 8)
    with pytest.raises(ValueError, match="kv cache"):
        bm.swap_in(c)
    bm.free(c)  # a swapped request frees its host blocks
    assert bm.num_free_host_blocks == 1


def test_swapped_in_blocks_are_registered_again() -> None:
    bm = BlockManager(8, BS, num_host_blocks=4)
    a = make_req("a", range(9))
    admit(bm, a)
    bm.swap_out(a)
    filler = make_req("f", range(300, 332))
    compute(bm, filler, 32)  # evicts every cached block
    bm.free(filler)
    assert bm.get_computed_blocks(make_req("p", range(9)))[1] == 0
    bm.swap_in(a)
    bm.cache_full_blocks(a, a.num_computed_tokens)
    assert bm.get_computed_blocks(make_req("q", range(9)))[1] == 8
    bm.free(a)
    assert_idle(bm)
