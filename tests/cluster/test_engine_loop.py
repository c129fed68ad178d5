"""EngineLoop with a real tiny engine on CPU, no server: what each connection's sink receives."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator

import pytest

from actors.common.config import CacheConfig, EngineConfig, SchedulerConfig
from actors.common.sampling_params import SamplingParams
from actors.common.types import GenerateDelta, GenerateSpec
from actors.common.wire import batch_from_pb
from actors.engine.engine import LLMEngine
from actors.replica.loop import EngineLoop
from policies.cluster_view import ReplicaIdentity
from protos import replica_pb2

ENGINE = EngineConfig(
    cache=CacheConfig(cpu_kv_cache_bytes=16 << 20),
    scheduler=SchedulerConfig(max_num_batched_tokens=256, max_num_seqs=16),
    device="cpu",
)
GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


class RecordingSink:
    """The DeltaSink seam: keeps every message as the client would decode it off the wire."""

    def __init__(self) -> None:
        self.batches: list[list[GenerateDelta]] = []
        self.whole: list[list[GenerateDelta]] = []
        self.cond = threading.Condition()

    def put_batch(self, batch: replica_pb2.DeltaBatch, whole: list[GenerateDelta]) -> None:
        wire = replica_pb2.DeltaBatch.FromString(batch.SerializeToString())
        with self.cond:
            self.batches.append(batch_from_pb(wire))
            self.whole.append(whole)
            self.cond.notify_all()

    def wait_finished(self, count: int, timeout_s: float = 60.0) -> list[GenerateDelta]:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self._finals()) >= count, timeout_s)
            assert ok, f"only {len(self._finals())} of {count} choices finished"
            return [d for b in self.batches for d in b]

    def _finals(self) -> list[GenerateDelta]:
        return [d for b in self.batches for d in b if d.finished]


@pytest.fixture(scope="module")
def offline() -> LLMEngine:
    return LLMEngine(ENGINE)


@pytest.fixture
def loop() -> Iterator[EngineLoop]:
    engine_loop = EngineLoop(LLMEngine(ENGINE), ReplicaIdentity("r-loop", "127.0.0.1:0"))
    engine_loop.start()
    yield engine_loop
    engine_loop.stop()


def _choice(deltas: list[GenerateDelta], rid: str, index: int = 0) -> list[GenerateDelta]:
    return [d for d in deltas if d.request_id == rid and d.index == index]


def test_each_connection_gets_its_tokens_once_in_order(
    loop: EngineLoop, offline: LLMEngine
) -> None:
    prompts = [(1, 2, 3, 4), (9, 8, 7), (5, 5, 5, 5, 5)]
    sampled = SamplingParams(n=2, temperature=0.8, seed=7, max_tokens=6, ignore_eos=True)
    with_lp = dataclasses.replace(GREEDY, max_tokens=5, logprobs=1)
    specs_a = [GenerateSpec("a0", prompts[0], GREEDY), GenerateSpec("a1", prompts[1], sampled)]
    specs_b = [
        GenerateSpec("b0", prompts[2], with_lp),
        GenerateSpec("b1", prompts[0], dataclasses.replace(GREEDY, temperature=-1.0)),
    ]
    sink_a, sink_b = RecordingSink(), RecordingSink()
    for spec in specs_a:
        loop.submit(spec, sink_a)
    for spec in specs_b:
        loop.submit(spec, sink_b)
    got_a, got_b = sink_a.wait_finished(3), sink_b.wait_finished(2)

    expected = offline.generate([list(p) for p in prompts], [GREEDY, sampled, with_lp])
    for rid, got, exp, params in (
        ("a0", got_a, expected[0], GREEDY),
        ("a1", got_a, expected[1], sampled),
        ("b0", got_b, expected[2], with_lp),
    ):
        for index in range(params.n):
            deltas = _choice(got, rid, index)
            assert [t for d in deltas for t in d.token_ids] == exp.token_ids[index]
            assert "".join(d.text for d in deltas) == exp.texts[index]
            assert [d.finished for d in deltas] == [False] * (len(deltas) - 1) + [True]
            last = deltas[-1]
            assert last.finish_reason == "length" and last.num_output_tokens == params.max_tokens
            assert all(d.num_prompt_tokens == len(exp.prompt_token_ids) for d in deltas)
    # Logprobs travel whole with every token; a bad request fails alone, named.
    b0 = _choice(got_b, "b0")
    assert all(d.logprobs is not None and len(d.logprobs) == len(d.token_ids) for d in b0)
    (b1,) = _choice(got_b, "b1")
    assert b1.finish_reason == "error" and b1.error.field == "temperature"
    # One message per step per connection: never two deltas of one choice in a message.
    for sink in (sink_a, sink_b):
        for batch in sink.batches:
            keys = [(d.request_id, d.index) for d in batch]
            assert batch and len(set(keys)) == len(keys)
    assert len(sink_a.batches) <= loop.snapshot().load.num_steps
    # The server learns which requests ended from the whole deltas alone.
    ended = {(d.request_id, d.index) for w in sink_a.whole for d in w if d.finished}
    assert ended == {("a0", 0), ("a1", 0), ("a1", 1)}


def test_resume_and_abort(loop: EngineLoop, offline: LLMEngine) -> None:
    full = offline.generate([[3, 1, 4, 1, 5]], GREEDY)[0].token_ids[0]
    sink = RecordingSink()
    resume = GenerateSpec("res", (3, 1, 4, 1, 5), GREEDY, resume_token_ids=tuple(full[:3]))
    loop.submit(resume, sink)
    long = dataclasses.replace(GREEDY, max_tokens=500)
    loop.submit(GenerateSpec("long", (2, 7, 1, 8), long), sink)
    loop.abort("long")
    got = sink.wait_finished(2)
    resumed = _choice(got, "res")
    assert [t for d in resumed for t in d.token_ids] == full[3:]
    assert resumed[-1].num_output_tokens == GREEDY.max_tokens
    assert resumed[-1].num_prompt_tokens == 5
    aborted = _choice(got, "long")
    assert aborted[-1].finish_reason == "abort"
    assert sum(len(d.token_ids) for d in aborted) < long.max_tokens


def test_a_loop_whose_only_request_is_paused_waits_instead_of_spinning(loop: EngineLoop) -> None:
    """A migration pauses a request for its last copy; with nothing else to run, the loop must
    block (a spinning engine thread would hold the GIL the copy and its RPCs need)."""
    engine = loop.engine
    calls = 0
    real_step = engine.step

    def counting_step() -> list:
        nonlocal calls
        calls += 1
        return real_step()

    engine.step = counting_step  # type: ignore[method-assign]
    sink = RecordingSink()
    loop.submit(GenerateSpec("held", (1, 2, 3), GREEDY), sink)
    with sink.cond:
        assert sink.cond.wait_for(lambda: sink.batches, 30)
    loop.call(lambda: engine.pause_request("held")).result(10)
    before = calls
    threading.Event().wait(0.3)  # what a spinning loop would fill with step() calls
    assert calls - before <= 2
    loop.call(lambda: engine.resume_request("held")).result(10)
    loop.abort("held")  # wakes the loop: it steps again
    assert sink.wait_finished(1)[-1].finish_reason in ("abort", "length")


def test_a_wedged_iteration_stops_reports_and_health_until_it_ends() -> None:
    """Fault injection: a command that hangs the engine thread (as a wedged step would). Past
    stall_after_s the replica answers health checks False and sends no load report (so the
    controller drops it from dispatch and replaces it); idle time never counts as stalled."""
    from actors.replica.loop import EngineStalled

    engine_loop = EngineLoop(
        LLMEngine(ENGINE), ReplicaIdentity("r-wedge", "127.0.0.1:0"), stall_after_s=0.3
    )
    engine_loop.start()
    try:
        release = threading.Event()
        stuck = engine_loop.call(lambda: release.wait(30))  # the engine thread hangs here
        deadline = time.monotonic() + 10
        while engine_loop.alive:
            assert time.monotonic() < deadline, "a wedged loop still reads as alive"
            time.sleep(0.05)  # polling the health flag as the controller's checks do
        with pytest.raises(EngineStalled, match="in one iteration for"):
            engine_loop.snapshot()
        release.set()
        assert stuck.result(timeout=10) is True
        time.sleep(0.5)  # idle, longer than stall_after_s: still healthy
        assert engine_loop.alive and engine_loop.snapshot().load.running == 0
    finally:
        engine_loop.stop()
