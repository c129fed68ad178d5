"""Pure parts of the control plane: wire conversions and ControllerState (no Ray, no servers)."""

from __future__ import annotations

import dataclasses

import pytest

from actors.common.errors import ErrorKind, ReplicaError
from actors.common.sampling_params import SamplingParams
from actors.common.types import (
    GenerateDelta,
    GenerateSpec,
    LoadReport,
    TokenLogprob,
    running_delta,
)
from actors.common.wire import (
    batch_from_pb,
    batch_to_pb,
    delta_from_pb,
    delta_to_pb,
    report_from_pb,
    report_to_pb,
    spec_from_pb,
    spec_to_pb,
)
from actors.engine.outputs import RequestOutput
from orchestrator.controller.events import EventKind
from orchestrator.controller.state import ControllerState
from orchestrator.controller.wire import ViewUpdate, update_from_pb, update_to_pb
from policies.cluster_view import (
    ReplicaIdentity,
    ReplicaLoad,
    ReplicaState,
    RequestMeta,
)
from protos import replica_pb2

BAD_N = ReplicaError(ErrorKind.INVALID_ARGUMENT, "bad", "n", whole_request=True)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _load(rid: str, seq: int = 1, running: int = 0, incarnation: str = "a") -> LoadReport:
    load = ReplicaLoad(
        running=running,
        waiting=1,
        kv_blocks_free=10,
        kv_blocks_total=20,
        block_size=16,
        tokens_in_flight=5,
        step_time_ms=1.5,
        max_running=8,
        adapters_resident=frozenset({"lora-a"}),
        prefix_hashes=frozenset({"p1", "p2"}),
    )
    ident = ReplicaIdentity(rid, f"h:{len(rid)}", "node", incarnation, pid=7, started_at=1.0)
    return LoadReport(ident, seq, load)


def test_spec_delta_load_round_trip() -> None:
    params = SamplingParams(
        n=2, max_tokens=7, temperature=0.7, top_p=0.9, top_k=5, min_p=0.05,
        repetition_penalty=1.1, presence_penalty=-0.5, frequency_penalty=0.25, seed=42,
        stop=("a", "bc"), stop_token_ids=(3, 4), include_stop_str_in_output=True,
        ignore_eos=True, logprobs=0,
    )  # fmt: skip
    spec = GenerateSpec("r", (1, 2), params, priority=-1, adapter_id="x", resume_token_ids=(9,))
    assert spec_from_pb(spec_to_pb(spec)) == spec
    bare = GenerateSpec("r", (1,))
    assert spec_from_pb(spec_to_pb(bare)) == bare  # None seed/logprobs/adapter stay None
    lp = TokenLogprob(5, -0.25, ((5, -0.25), (6, -2.0)))
    with_lp = GenerateDelta("r", 1, (5,), "x", True, "stop", (lp,), None, 2, 1, None)
    assert delta_from_pb(delta_to_pb(with_lp)) == with_lp
    empty_lp = dataclasses.replace(with_lp, logprobs=(), error=BAD_N)
    assert delta_from_pb(delta_to_pb(empty_lp)) == empty_lp
    assert delta_from_pb(delta_to_pb(empty_lp)).ends_request
    assert report_from_pb(report_to_pb(_load("r1"))) == _load("r1")


@dataclasses.dataclass
class _Usage:
    num_prompt_tokens: int
    num_resumed: int


def test_delta_batch_round_trip_keeps_order() -> None:
    """Column entries and whole deltas come back as the same deltas, in the order produced."""
    outs = [
        RequestOutput("a", 0, [5, 6], "xy", False, num_output_tokens=2),
        RequestOutput("b", 1, [], "", False, num_output_tokens=0),
        RequestOutput("c", 0, [7], "\u00e9", False, num_output_tokens=4),
    ]
    usage = [_Usage(3, 0), _Usage(4, 0), _Usage(2, 10)]
    lp = TokenLogprob(9, -0.5, ((9, -0.5),))
    first = GenerateDelta("e", 0, (), "", True, "error", error=BAD_N, num_prompt_tokens=1)
    middle = GenerateDelta("d", 0, (9,), "z", False, None, (lp,), None, 2, 1)
    last = GenerateDelta("b", 0, (8,), "q", True, "length", None, None, 4, 3)
    batch = batch_to_pb(outs, usage, [(0, first), (2, middle), (3, last)])
    got = batch_from_pb(replica_pb2.DeltaBatch.FromString(batch.SerializeToString()))
    assert got == [
        first,
        GenerateDelta("a", 0, (5, 6), "xy", False, None, None, None, 3, 2),
        GenerateDelta("b", 1, (), "", False, None, None, None, 4, 0),
        middle,
        GenerateDelta("c", 0, (7,), "\u00e9", False, None, None, None, 2, 14),
        last,
    ]
    assert len(batch.deltas) == 3 and list(batch.token_counts) == [2, 0, 1]
    assert hash(got[1]) == hash(GenerateDelta("a", 0, (5, 6), "xy", False, None, None, None, 3, 2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        got[1].text = "changed"  # type: ignore[misc]
    assert batch_from_pb(batch_to_pb([], [], [(0, last)])) == [last]
    assert running_delta("a", 0, (5, 6), "xy", 3, 2) == got[1]
    assert batch_from_pb(batch_to_pb(outs[:1], usage[:1])) == got[1:2]


def test_value_errors_become_typed_invalid_arguments() -> None:
    err = ReplicaError.from_value_error(ValueError("temperature: must be >= 0"))
    assert (err.kind, err.field, err.message) == (
        ErrorKind.INVALID_ARGUMENT,
        "temperature",
        "must be >= 0",
    )
    odd = ReplicaError.from_value_error(ValueError("something odd happened"))
    assert (odd.field, odd.message) == ("request", "something odd happened")


def test_view_update_round_trip_and_derived_state() -> None:
    state = ControllerState(1.0, Clock())
    state.register(_load("r1"))
    update = ViewUpdate(state.view(), "weighted", {"weights": {"queue": 1.0}, "max_queue": 3})
    assert update_from_pb(update_to_pb(update)) == update
    view = state.view().get("r1")
    assert view.state is ReplicaState.READY and view.healthy
    assert (view.running, view.prefix_hashes, view.node_id) == (0, frozenset({"p1", "p2"}), "node")
    # Desired cordon shows in the view at once, before the replica reports it.
    state.records["r1"].cordoned_by_operator = True
    state.touch(state.records["r1"])
    assert state.view().get("r1").state is ReplicaState.CORDONED
    assert not state.view().get("r1").healthy
    # The patched cached view equals a full rebuild.
    patched = state.view()
    state._view = None
    assert state.view().replicas == patched.replicas


def test_state_register_report_and_restart_protocol() -> None:
    state = ControllerState(1.0, Clock())
    assert not state.report(_load("r1"))  # unknown: register first
    assert state.register(_load("r1")) == (True, "registered")
    assert state.report(_load("r1", seq=3, running=4))
    assert not state.report(_load("r1", seq=4, incarnation="b"))  # restarted process
    assert state.report(_load("r1", seq=2, running=9))  # reordered old report: ignored
    assert state.view().get("r1").running == 4
    bad = _load("r2")
    bad = dataclasses.replace(bad, identity=dataclasses.replace(bad.identity, address=""))
    assert state.register(bad) == (
        False,
        "address: must be non-empty",
    )


def test_stale_replicas_turn_dead_and_events_tell() -> None:
    clock = Clock()
    state = ControllerState(1.0, clock)
    state.register(_load("r1"))
    state.register(_load("r2"))
    clock.now += 0.5
    state.report(_load("r1", seq=2))
    clock.now += 0.8
    assert state.mark_stale() == ["r2"]
    assert [r.replica_id for r in state.view().healthy()] == ["r1"]
    assert state.view().get("r2").state is ReplicaState.DEAD
    state.register(_load("r1", seq=9, incarnation="b"))
    kinds = [(e.kind, e.replica) for e in state.events.since()]
    assert kinds == [
        (EventKind.REPLICA_JOINED, "r1"),
        (EventKind.REPLICA_JOINED, "r2"),
        (EventKind.REPLICA_UNHEALTHY, "r2"),
        (EventKind.REPLICA_RESTARTED, "r1"),
    ]
    assert [e.seq for e in state.events.since(after=2)] == [3, 4]
    # The patched cached view equals a full rebuild.
    patched = state.view()
    state._view = None
    assert state.view().replicas == patched.replicas


def test_two_routers_on_one_stale_view_do_not_herd() -> None:
    from orchestrator.controller.router import Router

    state = ControllerState(1.0, Clock())
    for i in range(10):
        state.register(_load(f"r{i}"))
    update = ViewUpdate(state.view(), "least_load", {"max_queue": 64})
    routers = [Router("unused:1"), Router("unused:1")]
    for router in routers:
        router.apply_update(update)
    counts: dict[str, int] = {}
    for i in range(40):
        result = routers[i % 2].decide_now(RequestMeta(f"q{i}", 16, 16)).result
        counts[result.replica_id] = counts.get(result.replica_id, 0) + 1
    # Each router spreads its own 20 over the 10 replicas: at most 2 + 2 on any one.
    assert len(counts) == 10 and max(counts.values()) <= 4
    # release() takes a dispatch back; a newer report of a replica resets the counts.
    routers[0].release("r0")
    assert routers[0].stats()["since_report"]["r0"] == 1
    state.report(_load("r0", seq=5))
    routers[0].apply_update(ViewUpdate(state.view(), "least_load", {"max_queue": 64}))
    assert routers[0].stats()["since_report"]["r0"] == 0
