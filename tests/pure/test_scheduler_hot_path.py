"""Scheduler hot path: decodes inside a block allocate nothing; finishing keeps running order."""

from __future__ import annotations

from actors.common.config import SchedulerConfig
from actors.common.sampling_params import SamplingParams
from actors.engine.block_manager import BlockManager
from actors.engine.request import Request, RequestStatus
from actors.engine.scheduler import Scheduler

BS = 4


def _sched(num_blocks: int = 32) -> Scheduler:
    cfg = SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=8)
    return Scheduler(cfg, BlockManager(num_blocks, BS, True), max_model_len=128)


def _req(rid: str, prompt_len: int, max_tokens: int) -> Request:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    return Request(rid, list(range(1, prompt_len + 1)), params, arrival_time=0.0)


def _step(s: Scheduler) -> None:
    out = s.schedule()
    s.update(out, {c.request.request_id: 9 for c in out.chunks if c.needs_sample})


def test_decode_blocks_grow_exactly_at_block_boundaries() -> None:
    s = _sched()
    req = _req("a", 3, 12)
    s.add_request(req)
    free_before = s.block_manager.num_free_blocks
    for _ in range(11):
        _step(s)
        # The next step's token needs a slot only once the computed tokens fill their blocks.
        assert len(req.block_ids) == -(-req.num_computed_tokens // BS)
        used = free_before - s.block_manager.num_free_blocks
        assert used == len(req.block_ids)
    _step(s)
    assert req.status == RequestStatus.FINISHED_LENGTH and req.num_output_tokens == 12


def test_finishing_a_middle_request_keeps_the_others_in_order() -> None:
    s = _sched()
    reqs = [_req(f"r{i}", 2 + i, 8) for i in range(5)]
    for r in reqs:
        s.add_request(r)
    _step(s)
    assert s.running_requests() == reqs
    s.finish_request("r2", RequestStatus.FINISHED_ABORTED)
    assert s.running_requests() == [reqs[0], reqs[1], reqs[3], reqs[4]]
    assert s.num_running == 4 and s.get_request("r2") is None
    _step(s)
    assert [r.num_output_tokens for r in s.running_requests()] == [2, 2, 2, 2]
