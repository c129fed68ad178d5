"""Scheduler: chunked prefill under one budget, admission order, preemption, n > 1, finishing.

No tensors: a test drives schedule() -> (pretend the model ran) -> update() with chosen tokens.
"""

from __future__ import annotations

import random

import pytest

from actors.common.config import SchedulerConfig
from actors.common.sampling_params import SamplingParams
from actors.engine.block_manager import BlockManager
from actors.engine.outputs import SchedulerOutput
from actors.engine.request import Request, RequestStatus
from actors.engine.scheduler import Scheduler

BS = 4
NEXT_TOKEN = 7  # what the pretend model samples unless a test says otherwise


def make_sched(
    num_blocks: int = 64,
    budget: int = 64,
    max_seqs: int = 16,
    mode: str = "recompute",
    host_blocks: int = 0,
    max_model_len: int = 256,
    caching: bool = True,
    max_loras: int = 0,
) -> Scheduler:
    cfg = SchedulerConfig(
        max_num_batched_tokens=budget, max_num_seqs=max_seqs, preemption_mode=mode
    )
    bm = BlockManager(num_blocks, BS, caching, num_host_blocks=host_blocks)
    return Scheduler(cfg, bm, max_model_len, max_loras)


def make_req(
    rid: str,
    prompt_len: int,
    max_tokens: int = 4,
    priority: int = 0,
    first_token: int = 0,
    adapter_id: str | None = None,
    **kw: object,
) -> Request:
    params = SamplingParams(max_tokens=max_tokens, **kw)  # type: ignore[arg-type]
    prompt = list(range(first_token, first_token + prompt_len))
    # Equal arrival times: the scheduler breaks ties by the order requests were added.
    return Request(rid, prompt, params, arrival_time=0.0, priority=priority, adapter_id=adapter_id)


def step(s: Scheduler, token: int = NEXT_TOKEN) -> tuple[SchedulerOutput, list[Request]]:
    out = s.schedule()
    sampled = {c.request.request_id: token for c in out.chunks if c.needs_sample}
    return out, s.update(out, sampled)


def chunk_sizes(out: SchedulerOutput) -> dict[str, int]:
    return {c.request.request_id: c.num_new_tokens for c in out.chunks}


def run_to_completion(s: Scheduler, max_steps: int = 500) -> int:
    for n in range(max_steps):
        if not s.has_unfinished():
            return n
        step(s)
    raise AssertionError("scheduler did not finish")


def assert_idle(s: Scheduler) -> None:
    bm = s.block_manager
    assert not s.has_unfinished()
    assert all(bm.ref_count(b) == 0 for b in range(bm.num_total_blocks))
    assert bm.num_free_blocks == bm.num_total_blocks
    assert bm.num_free_host_blocks == bm.num_host_blocks


def test_single_request_prefills_then_decodes_and_finishes_by_length() -> None:
    s = make_sched()
    r = make_req("a", 10, max_tokens=3)
    s.add_request(r)
    out, changed = step(s)
    assert chunk_sizes(out) == {"a": 10} and changed == [r]
    assert r.num_computed_tokens == 10 and r.output_token_ids == [NEXT_TOKEN]
    assert chunk_sizes(step(s)[0]) == {"a": 1}
    step(s)
    assert r.status == RequestStatus.FINISHED_LENGTH and r.num_output_tokens == 3
    assert_idle(s)


def test_chunked_prefill_under_budget_with_decodes_first() -> None:
    s = make_sched(budget=8)
    short = make_req("short", 3, max_tokens=20)
    s.add_request(short)
    step(s)  # short is now decoding
    long = make_req("long", 20, max_tokens=2)
    s.add_request(long)
    sizes = []
    while long.num_output_tokens == 0:
        out, _ = step(s)
        assert out.num_batched_tokens <= 8
        assert out.chunks[0].request is short  # the decode goes first
        sizes.append(chunk_sizes(out))
    assert sizes == [{"short": 1, "long": 7}, {"short": 1, "long": 7}, {"short": 1, "long": 6}]
    assert long.num_computed_tokens == 20


def test_chunk_that_stops_mid_prompt_samples_nothing() -> None:
    s = make_sched(budget=6)
    r = make_req("a", 10)
    s.add_request(r)
    out, changed = step(s)
    assert not out.chunks[0].needs_sample and changed == []
    assert r.num_computed_tokens == 6 and r.output_token_ids == []


def test_max_num_seqs_bounds_running() -> None:
    s = make_sched(max_seqs=2)
    reqs = [make_req(f"r{i}", 3, max_tokens=2) for i in range(3)]
    for r in reqs:
        s.add_request(r)
    out, _ = step(s)
    assert set(chunk_sizes(out)) == {"r0", "r1"} and s.num_running == 2 and s.num_waiting == 1
    step(s)  # r0 and r1 finish (2 tokens each)
    out, _ = step(s)
    assert set(chunk_sizes(out)) == {"r2"}


def test_priority_then_fcfs_admission() -> None:
    s = make_sched(max_seqs=1)
    order = [("low_old", 5), ("high_new", 0), ("low_new", 5), ("high_newer", 0)]
    for rid, prio in order:
        s.add_request(make_req(rid, 3, max_tokens=1, priority=prio))
    admitted = []
    while s.has_unfinished():
        out, _ = step(s)
        admitted.extend(chunk_sizes(out))
    assert admitted == ["high_new", "high_newer", "low_old", "low_new"]


def test_arrival_time_orders_within_a_priority() -> None:
    s = make_sched(max_seqs=1)
    late, early = make_req("late", 3, max_tokens=1), make_req("early", 3, max_tokens=1)
    late.arrival_time, early.arrival_time = 2.0, 1.0
    s.add_request(late)
    s.add_request(early)
    assert chunk_sizes(step(s)[0]) == {"early": 3}
    assert chunk_sizes(step(s)[0]) == {"late": 3}


def test_prefix_hit_on_admission_records_cached_tokens() -> None:
    s = make_sched()
    a = make_req("a", 14, max_tokens=1)
    s.add_request(a)
    step(s)
    b = make_req("b", 14, max_tokens=1)
    s.add_request(b)
    out, _ = step(s)
    assert b.num_cached_tokens == 12 and chunk_sizes(out) == {"b": 2}
    assert_idle(s)


def test_preemption_by_recompute_picks_newest_lowest_priority() -> None:
    # 6 blocks of 4 tokens; three requests of 8 prompt tokens (2 blocks each) fill the cache.
    s = make_sched(num_blocks=6)
    old = make_req("old", 8, max_tokens=6, priority=1)
    new_hi = make_req("new_hi", 8, max_tokens=6, priority=0, first_token=100)
    new_lo = make_req("new_lo", 8, max_tokens=6, priority=1, first_token=200)
    for r in (old, new_hi, new_lo):
        s.add_request(r)
    step(s)  # 3 prefills: 6 blocks used; every request has 9 tokens now
    out, _ = step(s)  # each decode needs a 3rd block: there are none
    assert out.preempted == [new_lo]
    assert new_lo.status == RequestStatus.PREEMPTED and new_lo.num_computed_tokens == 0
    assert new_lo.block_ids == [] and new_lo.output_token_ids == [NEXT_TOKEN]
    assert set(chunk_sizes(out)) == {"old", "new_hi"}
    assert s.num_preemptions == 1 and new_lo.num_preemptions == 1
    # It goes back to the front of its priority and recomputes prompt + its generated token.
    late = make_req("late", 3, max_tokens=1, priority=1, first_token=300)
    s.add_request(late)
    assert s.waiting_requests() == [new_lo, late]
    run_to_completion(s)
    assert new_lo.status == RequestStatus.FINISHED_LENGTH
    assert new_lo.output_token_ids == [NEXT_TOKEN] * 6
    assert_idle(s)


def test_preemption_can_pick_the_requester_itself() -> None:
    s = make_sched(num_blocks=4)
    first = make_req("first", 8, max_tokens=8)
    second = make_req("second", 7, max_tokens=8, first_token=50)
    s.add_request(first)
    s.add_request(second)
    step(s)  # first: 2 blocks + 1 sampled, second: 2 blocks
    out, _ = step(s)  # first needs a 3rd block: the victim is second, the newest
    assert out.preempted == [second] and chunk_sizes(out) == {"first": 1}
    run_to_completion(s)
    assert first.num_output_tokens == 8 and second.num_output_tokens == 8
    assert_idle(s)


def test_preemption_by_swap_and_swap_in_before_admission() -> None:
    s = make_sched(num_blocks=6, mode="swap", host_blocks=8)
    a = make_req("a", 8, max_tokens=6)
    b = make_req("b", 8, max_tokens=6, first_token=100)
    c = make_req("c", 8, max_tokens=6, first_token=200)
    for r in (a, b, c):
        s.add_request(r)
    step(s)
    host_before = s.block_manager.num_free_host_blocks
    dev_blocks = list(c.block_ids)
    out, _ = step(s)
    assert out.preempted == [c] and c.status == RequestStatus.SWAPPED
    assert [d for d, _ in out.swap_out] == dev_blocks
    assert c.num_computed_tokens == 8  # its KV survives in host memory
    assert s.block_manager.num_free_host_blocks == host_before - 2
    d = make_req("d", 3, max_tokens=1, first_token=300)
    s.add_request(d)
    first_step: dict[str, int] = {}
    for n in range(40):
        out, _ = step(s)
        assert not (out.swap_in and out.swap_out)
        for rid in chunk_sizes(out):
            first_step.setdefault(rid, n)
        if not s.has_unfinished():
            break
    # b was swapped out while c waited on host memory; both come back before d is admitted.
    assert b.num_preemptions == 1 and first_step["c"] <= first_step["d"]
    assert c.output_token_ids == [NEXT_TOKEN] * 6
    assert_idle(s)


def test_swap_falls_back_to_recompute_without_host_room() -> None:
    s = make_sched(num_blocks=6, mode="swap", host_blocks=1)
    reqs = [make_req(f"r{i}", 8, max_tokens=3, first_token=100 * i) for i in range(3)]
    for r in reqs:
        s.add_request(r)
    step(s)
    out, _ = step(s)
    assert out.preempted == [reqs[2]] and out.swap_out == []
    assert reqs[2].status == RequestStatus.PREEMPTED
    run_to_completion(s)
    assert_idle(s)


def test_abort_frees_and_is_idempotent() -> None:
    s = make_sched(max_seqs=1)
    running, waiting = make_req("run", 9), make_req("wait", 5)
    s.add_request(running)
    s.add_request(waiting)
    step(s)
    assert s.abort_request("run") is running
    assert running.status == RequestStatus.FINISHED_ABORTED and running.block_ids == []
    assert s.abort_request("run") is None and s.abort_request("nope") is None
    assert s.abort_request("wait") is waiting
    assert_idle(s)


def test_abort_between_schedule_and_update_is_ignored_by_update() -> None:
    s = make_sched()
    r = make_req("a", 5)
    s.add_request(r)
    out = s.schedule()
    s.abort_request("a")
    assert s.update(out, {"a": 1}) == [] and r.output_token_ids == []
    assert_idle(s)


def test_finish_reasons() -> None:
    s = make_sched(max_model_len=12)
    eos = make_req("eos", 3, max_tokens=10)
    eos.eos_token_id = NEXT_TOKEN
    ignored = make_req("ignored", 3, max_tokens=2, ignore_eos=True, first_token=10)
    ignored.eos_token_id = NEXT_TOKEN
    stop_id = make_req("stop_id", 3, max_tokens=10, stop_token_ids=(NEXT_TOKEN,), first_token=20)
    ctx = make_req("ctx", 9, max_tokens=10, first_token=30)
    for r in (eos, ignored, stop_id, ctx):
        s.add_request(r)
    run_to_completion(s)
    assert eos.status == stop_id.status == RequestStatus.FINISHED_STOPPED
    assert eos.num_output_tokens == stop_id.num_output_tokens == 1
    assert ignored.status == RequestStatus.FINISHED_LENGTH and ignored.num_output_tokens == 2
    assert ctx.status == RequestStatus.FINISHED_LENGTH and ctx.num_tokens == 12
    assert_idle(s)


def test_finish_request_from_the_engine() -> None:
    s = make_sched()
    r = make_req("a", 5, max_tokens=10)
    s.add_request(r)
    step(s)
    assert s.finish_request("a", RequestStatus.FINISHED_STOPPED) is r
    assert r.status == RequestStatus.FINISHED_STOPPED
    with pytest.raises(ValueError, match="status"):
        s.finish_request("a", RequestStatus.RUNNING)
    assert_idle(s)


def test_missing_sample_fails_only_that_request() -> None:
    s = make_sched()
    a, b = make_req("a", 3), make_req("b", 3, first_token=10)
    s.add_request(a)
    s.add_request(b)
    out = s.schedule()
    changed = s.update(out, {"b": 1})
    assert set(changed) == {a, b}
    assert a.status == RequestStatus.FINISHED_ERROR and a.error
    assert b.status == RequestStatus.RUNNING and b.output_token_ids == [1]


def test_add_request_rejects_bad_input() -> None:
    s = make_sched(max_model_len=10)
    s.add_request(make_req("a", 3))
    with pytest.raises(ValueError, match="request_id"):
        s.add_request(make_req("a", 3))
    with pytest.raises(ValueError, match="prompt"):
        s.add_request(make_req("b", 0))
    with pytest.raises(ValueError, match="prompt"):
        s.add_request(make_req("c", 10))


def test_n_children_wait_for_choice_zero_then_share_the_prompt() -> None:
    s = make_sched(budget=8)
    params_len = 13  # 3 full blocks
    kids = []
    for i in range(3):
        r = make_req(f"p#{i}", params_len, max_tokens=3)
        r.parent_id, r.index, r.arrival_time = "p", i, 0.0
        kids.append(r)
        s.add_request(r)
    out, _ = step(s)
    assert chunk_sizes(out) == {"p#0": 8}
    out, _ = step(s)
    assert chunk_sizes(out) == {"p#0": 5}
    out, _ = step(s)  # choice 0 has its whole prompt: siblings come in with cache hits
    assert chunk_sizes(out) == {"p#0": 1, "p#1": 1, "p#2": 1}
    assert kids[1].num_cached_tokens == kids[2].num_cached_tokens == 12
    shared = kids[0].block_ids[:3]
    assert kids[1].block_ids[:3] == shared == kids[2].block_ids[:3]
    assert [s.block_manager.ref_count(b) for b in shared] == [3, 3, 3]
    run_to_completion(s)
    assert_idle(s)


def test_n_children_gate_leaves_budget_to_others() -> None:
    s = make_sched(budget=64)
    kids = []
    for i in range(2):
        r = make_req(f"p#{i}", 9, max_tokens=1)
        r.parent_id, r.index = "p", i
        kids.append(r)
        s.add_request(r)
    other = make_req("other", 4, max_tokens=1, first_token=100)
    s.add_request(other)
    out, _ = step(s)
    assert set(chunk_sizes(out)) == {"p#0", "other"}
    out, _ = step(s)
    assert chunk_sizes(out) == {"p#1": 1} and kids[1].num_cached_tokens == 8


def test_lone_request_too_large_fails_instead_of_hanging() -> None:
    s = make_sched(num_blocks=2)  # 8 tokens in the whole cache
    big = make_req("big", 7, max_tokens=5)
    s.add_request(big)
    n = run_to_completion(s, max_steps=10)
    assert big.status == RequestStatus.FINISHED_ERROR and "whole cache" in (big.error or "")
    assert big.num_output_tokens == 2 and n <= 3
    huge = make_req("huge", 12, max_tokens=1)
    s.add_request(huge)
    s.schedule()
    assert huge.status == RequestStatus.FINISHED_ERROR
    assert_idle(s)


def running_adapters(s: Scheduler) -> set[str]:
    return {r.adapter_id for r in s.running_requests() if r.adapter_id}


def test_a_cold_adapter_waits_for_a_drained_slot_while_running_adapters_overtake_it() -> None:
    s = make_sched(max_loras=2, max_seqs=16, budget=256)
    add = [
        ("a1", "A", 30), ("a2", "A", 30), ("b1", "B", 3),  # B runs the fewest: it drains
        ("c1", "C", 3),  # cold: both slots are taken
        ("a3", "A", 3), ("b2", "B", 3), ("a4", "A", 3),
    ]  # fmt: skip
    for rid, adapter, max_tokens in add:
        s.add_request(make_req(rid, 4, max_tokens=max_tokens, adapter_id=adapter))
    admitted: dict[str, int] = {}
    for n in range(40):
        out, _ = step(s)
        for c in out.chunks:
            admitted.setdefault(c.request.request_id, n)
        assert len(running_adapters(s)) <= 2
    assert admitted["a3"] == admitted["a4"] == 0  # overtook c1: A already has a slot
    assert admitted["b1"] == 0 and "b2" in admitted and admitted["b2"] > admitted["c1"]
    # b1 ends after its prefill + 2 decodes (steps 0-2); c1 takes B's slot on the next step.
    assert admitted["c1"] == 3
    assert not s.has_unfinished()


@pytest.mark.parametrize("seed", range(4))
def test_adapter_slots_never_exceeded_and_everyone_finishes(seed: int) -> None:
    rng = random.Random(seed)
    s = make_sched(max_loras=2, max_seqs=6, num_blocks=48, budget=32)
    for k in range(40):
        adapter = rng.choice(["A", "A", "A", "B", "C", "D", None])
        s.add_request(
            make_req(f"r{k}", rng.randrange(1, 12), rng.randrange(1, 12), adapter_id=adapter)
        )
    for _ in range(2000):
        if not s.has_unfinished():
            break
        step(s)
        assert len(running_adapters(s)) <= 2
    assert_idle(s)


def test_queue_counts() -> None:
    s = make_sched(num_blocks=10, max_seqs=1)
    s.add_request(make_req("a", 6, max_tokens=3))
    s.add_request(make_req("b", 6, max_tokens=3, first_token=50))
    step(s)
    assert (s.num_running, s.num_waiting) == (1, 1)
    assert sum(r.num_tokens for r in s.running_requests()) == 7
    assert (s.block_manager.num_free_blocks, s.block_manager.num_total_blocks) == (8, 10)


# ---- a simulated engine loop ----------------------------------------------------------------

VOCAB = 50
EOS = 3


def fake_next_token(tokens: list[int]) -> int:
    """The pretend model: a deterministic function of the whole history, like greedy decoding."""
    return (sum(tokens[-3:]) * 31 + len(tokens)) % VOCAB


def expected_output(req: Request, max_model_len: int) -> list[int]:
    tokens, out = list(req.prompt_token_ids), []
    while True:
        tok = fake_next_token(tokens)
        tokens.append(tok)
        out.append(tok)
        if tok == req.eos_token_id or len(out) >= req.sampling_params.max_tokens:
            return out
        if len(tokens) >= max_model_len:
            return out


class KVSim:
    """Plays the KV tensors: each slot holds a fingerprint of the prefix its KV belongs to.

    Reading every computed slot before writing catches a wrong block table, a block shared
    while written, or a swap copy that went missing.
    """

    def __init__(self, bm: BlockManager) -> None:
        self.bm = bm
        self.device: dict[tuple[int, int], int] = {}
        self.host: dict[tuple[int, int], int] = {}

    def fingerprint(self, req: Request, pos: int) -> int:
        return hash((req.adapter_id, tuple(req.all_token_ids[: pos + 1])))

    def run(self, out: SchedulerOutput) -> None:
        bs = self.bm.block_size
        for dev, host in out.swap_out:  # the runner copies out before anything writes
            for slot in range(bs):
                self.host[(host, slot)] = self.device.get((dev, slot), -1)
        for dev, host in out.swap_in:
            for slot in range(bs):
                self.device[(dev, slot)] = self.host.get((host, slot), -1)
        for chunk in out.chunks:
            req = chunk.request
            assert len(req.block_ids) * bs >= chunk.end
            assert len(set(req.block_ids)) == len(req.block_ids)
            for pos in range(chunk.start):
                block = req.block_ids[pos // bs]
                assert self.device.get((block, pos % bs)) == self.fingerprint(req, pos), (
                    f"{req.request_id}: stale KV at position {pos}"
                )
            for pos in range(chunk.start, chunk.end):
                block = req.block_ids[pos // bs]
                assert self.bm.ref_count(block) == 1, "wrote into a shared block"
                self.device[(block, pos % bs)] = self.fingerprint(req, pos)


def check_invariants(s: Scheduler, out: SchedulerOutput, live: list[Request]) -> None:
    cfg, bm = s.config, s.block_manager
    assert out.num_batched_tokens <= cfg.max_num_batched_tokens
    assert s.num_running <= cfg.max_num_seqs
    assert len({c.request.request_id for c in out.chunks}) == len(out.chunks)
    refs = [0] * bm.num_total_blocks
    host_used = 0
    for req in live:
        if req.status == RequestStatus.RUNNING:
            for b in req.block_ids:
                refs[b] += 1
        elif req.status == RequestStatus.SWAPPED:
            host_used += len(req.block_ids)
        else:
            assert req.block_ids == [] and req.status in (
                RequestStatus.WAITING,
                RequestStatus.PREEMPTED,
            )
    assert refs == [bm.ref_count(b) for b in range(bm.num_total_blocks)]
    assert bm.num_free_blocks == refs.count(0)
    assert bm.num_free_host_blocks + host_used == bm.num_host_blocks


@pytest.mark.parametrize("mode", ["recompute", "swap"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_simulated_engine_loop_random_requests(mode: str, seed: int) -> None:
    rng = random.Random(seed)
    max_model_len = 40
    s = make_sched(
        num_blocks=20, budget=16, max_seqs=6, mode=mode, host_blocks=12, max_model_len=max_model_len
    )
    kv = KVSim(s.block_manager)
    prefixes = [[rng.randrange(VOCAB) for _ in range(rng.randint(4, 12))] for _ in range(3)]
    live: list[Request] = []
    done: list[Request] = []
    aborted: set[str] = set()
    stopped_by_engine: set[str] = set()
    for t in range(600):
        if t < 150 and rng.random() < 0.4:
            prompt = rng.choice(prefixes) + [
                rng.randrange(VOCAB) for _ in range(rng.randint(1, 12))
            ]
            params = SamplingParams(max_tokens=rng.randint(1, 12), n=rng.choice([1, 1, 1, 3]))
            adapter = rng.choice([None, None, "lora-a@1"])
            prio = rng.randint(0, 2)
            for i in range(params.n):
                rid = f"{t}" if params.n == 1 else f"{t}#{i}"
                req = Request(
                    rid,
                    list(prompt),
                    params,
                    eos_token_id=EOS,
                    arrival_time=float(t),
                    priority=prio,
                    adapter_id=adapter,
                    parent_id=None if params.n == 1 else f"{t}",
                    index=i,
                )
                s.add_request(req)
                live.append(req)
        if live and rng.random() < 0.03:
            victim = rng.choice(live)
            assert s.abort_request(victim.request_id) is victim
            aborted.add(victim.request_id)
        out = s.schedule()
        check_invariants(s, out, [r for r in live if not r.is_finished])
        kv.run(out)
        sampled = {
            c.request.request_id: fake_next_token(c.request.all_token_ids)
            for c in out.chunks
            if c.needs_sample
        }
        for req in s.update(out, sampled):
            if not req.is_finished and rng.random() < 0.02:  # a stop string the engine saw
                s.finish_request(req.request_id, RequestStatus.FINISHED_STOPPED)
                stopped_by_engine.add(req.request_id)
        done.extend(r for r in live if r.is_finished)
        live = [r for r in live if not r.is_finished]
        if t >= 150 and not s.has_unfinished():
            break
    assert not s.has_unfinished() and not live
    assert_idle(s)
    for req in done:
        assert req.status != RequestStatus.FINISHED_ERROR, req.error
        if req.request_id in aborted or req.request_id in stopped_by_engine:
            continue
        assert req.output_token_ids == expected_output(req, max_model_len), req.request_id
    if mode == "swap":
        assert s.num_preemptions > 0
    assert any(r.num_cached_tokens > 0 for r in done)
