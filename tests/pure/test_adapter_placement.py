"""Adapter placement (policies/adapters.py): demand from the replicas' counters, replication up
at once and down with hysteresis, cold adapters off every device, the per-round bound."""

from __future__ import annotations

import pytest

from policies.adapters import (
    AdapterDemand,
    Placement,
    PlacementParams,
    PlacementState,
    plan_placement,
    target_holders,
)
from policies.cluster_view import ReplicaState, ReplicaView

P = PlacementParams(replica_rps=2.0, down_ratio=0.5, hold_s=30, settle_s=5, idle_s=100, window_s=10)


def rep(rid: str, resident: set[str], running: int = 0, **kw: object) -> ReplicaView:
    return ReplicaView(
        replica_id=rid,
        address=f"{rid}:1",
        max_running=8,
        adapter_slots=2,
        running=running,
        adapters_loaded=frozenset({"a", "b"}),
        adapters_resident=frozenset(resident),
        **kw,  # type: ignore[arg-type]
    )


def demand_of(rate: float, now: float, adapter: str = "a") -> AdapterDemand:
    """Demand whose window (P.window_s) holds `rate` req/s of `adapter` at `now`."""
    d = AdapterDemand(P.window_s)
    d.observe("r0", "i0", {adapter: 0}, now - 5)
    d.observe("r0", "i0", {adapter: round(rate * P.window_s)}, now - 1)
    return d


def plan(
    replicas: list[ReplicaView], d: AdapterDemand, state: PlacementState, now: float
) -> list[Placement]:
    return plan_placement(replicas, d, ["a", "b"], state, now, P)


def test_demand_counts_increments_over_the_window() -> None:
    d = AdapterDemand(10.0)
    d.observe("r1", "i1", {"a": 100}, 0.0)  # first sight: its past is not news
    assert d.rates(0.0) == {}
    d.observe("r1", "i1", {"a": 110, "b": 3}, 1.0)
    d.observe("r2", "j1", {"a": 7}, 1.0)  # first sight of r2
    d.observe("r2", "j1", {"a": 12}, 2.0)
    assert d.rates(2.0) == pytest.approx({"a": 1.5, "b": 0.3})
    d.observe("r1", "i2", {"a": 4}, 3.0)  # restarted: counts from zero again
    assert d.rates(3.0)["a"] == pytest.approx(1.9)
    assert d.rates(11.5) == pytest.approx({"a": 0.9})  # the t=1 arrivals left the window
    assert d.rates(20.0) == {}
    assert d.idle_for("a", 20.0) == 17.0 and d.idle_for("never", 20.0) == 20.0


def test_target_holders() -> None:
    assert [target_holders(r, P) for r in (0.0, 0.1, 2.0, 2.1, 7.9)] == [0, 1, 1, 2, 4]


def test_a_hot_adapter_spreads_one_replica_per_settled_round_to_the_least_loaded() -> None:
    now = 1000.0
    d, state = demand_of(5.0, now), PlacementState()  # 5 req/s: wants 3 holders
    reps = [rep("r1", {"a"}), rep("r2", set(), running=6), rep("r3", set(), running=1)]
    first = plan(reps, d, state, now)
    assert [(p.adapter, p.replica_id, p.resident) for p in first] == [("a", "r3", True)]
    assert "5.00 req/s over 1 holder" in first[0].reason and "wants 3" in first[0].reason
    assert plan(reps, d, state, now + 1) == []  # within settle_s: the reports catch up
    reps[2] = rep("r3", {"a"}, running=1)
    assert [p.replica_id for p in plan(reps, d, state, now + P.settle_s)] == ["r2"]


def test_placement_fills_only_free_slots() -> None:
    now = 1000.0
    full = [rep("r1", {"a"}), rep("r2", {"b", "x"})]
    assert plan(full, demand_of(9.0, now), PlacementState(), now) == []
    room = [rep("r1", {"a"}), rep("r2", {"b"})]
    assert [p.replica_id for p in plan(room, demand_of(9.0, now), PlacementState(), now)] == ["r2"]


def test_holders_are_bounded_by_the_ready_replicas_serving_it() -> None:
    now = 1000.0
    d = demand_of(50.0, now)
    reps = [
        rep("r1", {"a"}),
        rep("r2", set(), state=ReplicaState.CORDONED),
        ReplicaView(replica_id="r3", address="x", adapters_loaded=frozenset({"b"})),
    ]
    assert plan(reps, d, PlacementState(), now) == []


def test_down_only_below_the_ratio_and_after_hold_s_then_never_below_one() -> None:
    now = 1000.0
    reps = [rep("r1", {"a"}, running=1), rep("r2", {"a"}, running=5), rep("r3", {"a"})]
    state = PlacementState(last_change={"a": now - 10})
    # 2.1 req/s: 2 holders would run at 1.05 each, above half their share (1.0): keep 3.
    assert plan(reps, demand_of(2.1, now), state, now) == []
    # 1.5 req/s fits 2 holders below half their share, but the last change was 10 s ago.
    assert plan(reps, demand_of(1.5, now), state, now) == []
    later = now + P.hold_s
    down = plan(reps, demand_of(1.5, later), state, later)
    assert [(p.replica_id, p.resident) for p in down] == [("r2", False)]  # the busiest goes
    one = [rep("r1", {"a"})]
    assert plan(one, demand_of(0.1, later + 100), PlacementState(), later + 100) == []


def test_a_rate_near_the_threshold_does_not_flap() -> None:
    """Up at 2.2 req/s to 2 holders; down needs < 1.0 req/s (half of one holder's share)."""
    now, state = 1000.0, PlacementState()
    reps = [rep("r1", {"a"}), rep("r2", set())]
    assert len(plan(reps, demand_of(2.2, now), state, now)) == 1
    reps[1] = rep("r2", {"a"})
    for k, rate in enumerate([1.9, 2.1, 1.2, 1.8] * 10):
        t = now + P.settle_s + 5 * k
        assert plan(reps, demand_of(rate, t), state, t) == []


def test_a_cold_adapter_leaves_every_device_after_idle_s() -> None:
    d = AdapterDemand(P.window_s)
    d.observe("r1", "i", {"b": 0}, 0.0)
    d.observe("r1", "i", {"b": 3}, 1.0)
    reps = [rep("r1", {"a", "b"}), rep("r2", {"b"})]
    state = PlacementState()
    # "a" had no requests since observation began at 0; "b" had its last at 1.
    assert plan(reps, d, state, 50.0) == []
    cold = plan(reps, d, state, 100.0)
    assert [(p.adapter, p.replica_id, p.resident) for p in cold] == [("a", "r1", False)]
    assert "no requests for 100s" in cold[0].reason
    later = plan(reps, d, state, 101.0)
    assert sorted((p.adapter, p.replica_id, p.resident) for p in later) == [
        ("b", "r1", False),
        ("b", "r2", False),
    ]


def test_at_most_max_actions_per_round_hottest_first() -> None:
    params = PlacementParams(replica_rps=0.1, max_actions=2, window_s=10)
    d = AdapterDemand(10.0)
    names = [f"x{i}" for i in range(5)]
    d.observe("r0", "i", dict.fromkeys(names, 0), 0.0)
    d.observe("r0", "i", {n: 10 * (i + 1) for i, n in enumerate(names)}, 1.0)
    reps = [
        ReplicaView(replica_id=r, address=r, adapters_loaded=frozenset(names), adapter_slots=4)
        for r in "pq"
    ]
    plans = plan_placement(reps, d, names, PlacementState(), 2.0, params)
    assert [p.adapter for p in plans] == ["x4", "x3"]


def test_params_refuse_nonsense() -> None:
    for bad in ({"replica_rps": 0}, {"down_ratio": 1.0}, {"hold_s": -1}, {"max_actions": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            PlacementParams(**bad)  # type: ignore[arg-type]
