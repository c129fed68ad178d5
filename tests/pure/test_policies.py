"""Dispatch policies on hand-built ClusterViews: no torch, no ray."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from dataclasses import replace

import pytest

from policies.cluster_view import ClusterView, ReplicaState, ReplicaView, RequestMeta
from policies.dispatch import (
    REASON_ALL_FULL,
    REASON_NO_HEALTHY,
    DispatchPolicy,
    dispatch_policy_names,
    make_dispatch_policy,
)
from policies.params import PolicyParamError
from policies.prefix import block_hashes

ALL_POLICIES = (
    "round_robin",
    "least_load",
    "power_of_two",
    "llumnix",
    "prefix_affinity",
    "weighted",
)


def replica(rid: str, **kw: object) -> ReplicaView:
    base: dict[str, object] = dict(
        address=f"10.0.0.{rid[-1]}:7000",
        kv_blocks_free=1000,
        kv_blocks_total=1000,
        block_size=16,
        max_running=8,
    )
    base.update(kw)
    if "healthy" in base:  # shorthand: a replica that stopped reporting
        base["state"] = ReplicaState.READY if base.pop("healthy") else ReplicaState.DEAD
    return ReplicaView(replica_id=rid, **base)  # type: ignore[arg-type]


def view(*replicas: ReplicaView) -> ClusterView:
    return ClusterView(replicas=tuple(replicas), timestamp=1.0, generation=1)


def meta(rid: str = "req", prompt: int = 64, **kw: object) -> RequestMeta:
    return RequestMeta(request_id=rid, num_prompt_tokens=prompt, max_tokens=16, **kw)  # type: ignore[arg-type]


def policy(name: str, **params: object) -> DispatchPolicy:
    if name == "power_of_two":
        params.setdefault("seed", 7)
    return make_dispatch_policy(name, params)


def test_registry_names_every_policy() -> None:
    assert set(dispatch_policy_names()) == set(ALL_POLICIES)


@pytest.mark.parametrize("name", ALL_POLICIES)
def test_unhealthy_replicas_are_skipped(name: str) -> None:
    v = view(
        replica("r0", healthy=False),
        replica("r1", running=7, waiting=3),
        replica("r2", healthy=False),
    )
    p = policy(name)
    for i in range(5):
        assert p.choose(v, meta(f"q{i}")).replica_id == "r1"


@pytest.mark.parametrize("name", ALL_POLICIES)
def test_no_healthy_replica_is_refused_as_unavailable(name: str) -> None:
    for v in (view(), view(replica("r0", healthy=False))):
        decision = policy(name).choose(v, meta())
        assert decision.replica_id is None
        assert decision.reason == REASON_NO_HEALTHY
        assert not decision.overloaded


@pytest.mark.parametrize("name", ALL_POLICIES)
def test_full_queues_are_refused_as_overloaded(name: str) -> None:
    # 8 running slots all taken, 4 waiting: queue_length 4 == max_queue.
    full = [replica(f"r{i}", running=8, waiting=4) for i in range(3)]
    decision = policy(name, max_queue=4).choose(view(*full), meta())
    assert decision.replica_id is None and decision.overloaded
    assert decision.reason == REASON_ALL_FULL
    # In-flight dispatches fill a queue too: r3 has room by its report, not after 4 dispatches.
    r3 = replica("r3", running=8, waiting=0, inflight_dispatches=4)
    assert policy(name, max_queue=4).choose(view(*full, r3), meta()).overloaded
    r3_open = replace(r3, inflight_dispatches=3)
    assert policy(name, max_queue=4).choose(view(*full, r3_open), meta()).replica_id == "r3"


def test_free_running_slots_absorb_pending_before_it_counts_as_queue() -> None:
    r = replica("r0", running=2, waiting=5, max_running=8)
    assert r.queue_length == 0 and not r.is_full(1)
    assert replica("r0", running=8, waiting=1).queue_length == 1


def test_round_robin_cycles_over_open_replicas() -> None:
    v = view(replica("r0"), replica("r1"), replica("r2"))
    p = policy("round_robin")
    assert [p.choose(v, meta()).replica_id for _ in range(6)] == ["r0", "r1", "r2"] * 2


def test_least_load_counts_running_waiting_and_inflight() -> None:
    v = view(
        replica("r0", running=4),
        replica("r1", running=1, waiting=1, inflight_dispatches=1),
        replica("r2", running=2, waiting=1, inflight_dispatches=2),
    )
    assert policy("least_load").choose(v, meta()).replica_id == "r1"


def test_least_load_normalises_by_capacity() -> None:
    # 4 of 32 slots is less loaded than 2 of 4.
    v = view(replica("small", running=2, max_running=4), replica("big", running=4, max_running=32))
    assert policy("least_load").choose(v, meta()).replica_id == "big"


def test_power_of_two_is_seeded_and_picks_the_lighter_of_its_pair() -> None:
    v = view(*(replica(f"r{i}", running=i) for i in range(6)))
    a, b = policy("power_of_two", seed=3), policy("power_of_two", seed=3)
    picks_a = [a.choose(v, meta()).replica_id for _ in range(50)]
    assert picks_a == [b.choose(v, meta()).replica_id for _ in range(50)]
    # The heaviest replica can never win a pair; the lightest wins whenever sampled.
    assert "r5" not in picks_a
    assert Counter(picks_a)["r0"] > Counter(picks_a)["r4"]


def test_llumnix_picks_max_freeness_after_reserving_queued_demand() -> None:
    # r0 has the most free blocks but 10 queued requests, each estimated at the new prompt's size;
    # freeness is per request on the replica (Llumnix divides by the batch).
    v = view(
        replica(
            "r0", kv_blocks_free=1800, kv_blocks_total=2000, running=2, waiting=10, max_running=64
        ),
        replica("r1", kv_blocks_free=400, running=2, max_running=64),
    )
    p = policy("llumnix", headroom_fraction=0.0)
    # r0 (1800-2-400-40)/13 = 104.5 < r1 (400-2-40)/3 = 119.3
    assert p.choose(v, meta(prompt=16 * 40)).replica_id == "r1"
    # r0 (1800-2-10-1)/13 = 137.5 > r1 (400-2-1)/3 = 132.3
    assert p.choose(v, meta(prompt=16)).replica_id == "r0"


def test_llumnix_keeps_headroom_for_high_priority_requests() -> None:
    # r0: more free KV, but serving a big batch; r1: small free KV, idle.
    v = view(
        replica("r0", kv_blocks_free=300, kv_blocks_total=1000, running=1, max_running=64),
        replica("r1", kv_blocks_free=120, kv_blocks_total=200, running=0, max_running=64),
    )
    p = policy("llumnix", headroom_fraction=0.5, high_priority_max=-1)
    normal = p.choose(v, meta(prompt=16 * 10, priority=0))
    urgent = p.choose(v, meta(prompt=16 * 10, priority=-1))
    # Normal: r0 300-500 headroom < 0, r1 120-100-10 = 10 > 0 -> r1. Urgent ignores headroom:
    # r0 (300-1-10)/2 = 144.5 beats r1 110/1.
    assert normal.replica_id == "r1"
    assert urgent.replica_id == "r0"


def test_llumnix_deficit_is_not_hidden_by_batch_size() -> None:
    v = view(
        replica("busy", kv_blocks_free=0, running=50, max_running=64),
        replica("calm", kv_blocks_free=0, running=1, max_running=64),
    )
    assert policy("llumnix").choose(v, meta()).replica_id == "calm"


def test_prefix_affinity_prefers_most_leading_blocks_cached() -> None:
    tokens = list(range(16 * 6))
    hashes = tuple(block_hashes(tokens, 16))
    v = view(
        replica("r0", prefix_hashes=frozenset(hashes[:2])),
        replica("r1", prefix_hashes=frozenset(hashes[:5]), running=3),
        # r2 caches later blocks but not the first: no leading match.
        replica("r2", prefix_hashes=frozenset(hashes[1:])),
    )
    decision = policy("prefix_affinity").choose(v, meta(prefix_hashes=hashes))
    assert decision.replica_id == "r1"
    assert "5 blocks" in decision.reason


def test_prefix_affinity_ties_go_to_lower_load_and_misses_to_least_load() -> None:
    hashes = tuple(block_hashes(list(range(64)), 16))
    cached = frozenset(hashes)
    v = view(
        replica("r0", prefix_hashes=cached, running=5),
        replica("r1", prefix_hashes=cached, running=1),
        replica("r2"),
    )
    p = policy("prefix_affinity", min_match_blocks=2)
    assert p.choose(v, meta(prefix_hashes=hashes)).replica_id == "r1"
    other = tuple(block_hashes(list(range(1000, 1064)), 16))
    assert p.choose(v, meta(prefix_hashes=other)).replica_id == "r2"
    # One leading block matched is below min_match_blocks=2: least_load too.
    one = view(replica("r0", prefix_hashes=frozenset(hashes[:1]), running=1), replica("r1"))
    assert p.choose(one, meta(prefix_hashes=hashes)).replica_id == "r1"
    one_is_enough = policy("prefix_affinity", min_match_blocks=1)
    assert one_is_enough.choose(one, meta(prefix_hashes=hashes)).replica_id == "r0"


def test_prefix_affinity_gives_up_affinity_when_imbalanced() -> None:
    hashes = tuple(block_hashes(list(range(64)), 16))
    v = view(
        replica("hot", prefix_hashes=frozenset(hashes), running=8, waiting=10, max_running=8),
        replica("cold"),
    )
    assert (
        policy("prefix_affinity", balance_abs_threshold=4)
        .choose(v, meta(prefix_hashes=hashes))
        .replica_id
        == "cold"
    )
    assert (
        policy("prefix_affinity", balance_abs_threshold=100)
        .choose(v, meta(prefix_hashes=hashes))
        .replica_id
        == "hot"
    )


def test_weighted_combines_scorers() -> None:
    hashes = tuple(block_hashes(list(range(64)), 16))
    sql = frozenset({"sql"})  # every replica serves it; on the device at "adapter" only
    v = view(
        replica(
            "prefix", prefix_hashes=frozenset(hashes), waiting=2, running=8, adapters_loaded=sql
        ),
        replica("adapter", adapters_resident=sql, adapters_loaded=sql, waiting=1, running=8),
        replica("idle", kv_blocks_free=1000, adapters_loaded=sql),
    )
    req = meta(prefix_hashes=hashes, adapter_id="sql")
    assert policy("weighted", weights={"prefix": 1.0}).choose(v, req).replica_id == "prefix"
    assert (
        policy("weighted", weights={"adapter_resident": 1.0}).choose(v, req).replica_id == "adapter"
    )
    assert (
        policy("weighted", weights={"queue": 1.0, "load": 1.0}).choose(v, req).replica_id == "idle"
    )
    # Prefix outweighs queue 3:1 here; with queue dominant the idle replica wins.
    assert (
        policy("weighted", weights={"prefix": 3.0, "queue": 1.0}).choose(v, req).replica_id
        == "prefix"
    )
    assert (
        policy("weighted", weights={"prefix": 1.0, "queue": 3.0}).choose(v, req).replica_id
        == "idle"
    )


@pytest.mark.parametrize("name", ALL_POLICIES)
def test_two_routers_with_their_own_inflight_do_not_herd(name: str) -> None:
    """Two ingress routers hold the same stale snapshot; each counts only its own dispatches."""
    shared = view(*(replica(f"r{i}") for i in range(4)))
    routers = [policy(name, seed=i) if name == "power_of_two" else policy(name) for i in range(2)]
    snapshots = [shared, shared]
    sent: Counter[str] = Counter()
    for step in range(8):
        for i, router in enumerate(routers):
            decision = router.choose(snapshots[i], meta(f"q{step}-{i}"))
            assert decision.replica_id is not None
            snapshots[i] = snapshots[i].add_inflight(decision.replica_id)
            sent[decision.replica_id] += 1
    # 16 requests over 4 replicas: nobody gets more than half (herding would give one all 16).
    assert max(sent.values()) <= 8 and len(sent) == 4, sent
    if name != "power_of_two":
        assert max(sent.values()) - min(sent.values()) <= 2, sent


def test_without_inflight_counting_a_stale_view_herds() -> None:
    """The control experiment for the test above: the same view every time sends all to one."""
    shared = view(*(replica(f"r{i}") for i in range(4)))
    p = policy("least_load")
    assert {p.choose(shared, meta(f"q{i}")).replica_id for i in range(8)} == {"r0"}


def test_cluster_view_helpers() -> None:
    v = view(replica("r0"), replica("r1", healthy=False))
    assert [r.replica_id for r in v.healthy()] == ["r0"]
    assert v.get("r1") is not None and v.get("zz") is None
    v2 = v.add_inflight("r0", 3).add_inflight("r0", -5)
    assert v2.get("r0").inflight_dispatches == 0  # type: ignore[union-attr]
    assert v.get("r0").inflight_dispatches == 0  # type: ignore[union-attr]  # original untouched
    assert v.with_inflight({}) is v


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"request_id": ""}, "request_id"),
        ({"num_prompt_tokens": -1}, "num_prompt_tokens"),
        ({"max_tokens": -2}, "max_tokens"),
        ({"prefix_hashes": ["a"]}, "prefix_hashes"),
    ],
)
def test_request_meta_rejects_bad_fields(kwargs: dict[str, object], field: str) -> None:
    base: dict[str, object] = dict(request_id="r", num_prompt_tokens=1, max_tokens=1)
    base.update(kwargs)
    with pytest.raises(ValueError, match=f"^{field}: "):
        RequestMeta(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "params", "key"),
    [
        ("least_load", {"bogus": 1}, "bogus"),
        ("least_load", {"max_queue": 0}, "max_queue"),
        ("least_load", {"max_queue": "8"}, "max_queue"),
        ("round_robin", {"start": 1.5}, "start"),
        ("power_of_two", {"seed": True}, "seed"),
        ("llumnix", {"headroom_fraction": 1.0}, "headroom_fraction"),
        ("prefix_affinity", {"min_match_blocks": 0}, "min_match_blocks"),
        ("weighted", {"weights": {"vibes": 1.0}}, "weights.vibes"),
        ("weighted", {"weights": {"queue": -1.0}}, "weights.queue"),
        ("weighted", {"weights": {"queue": float("inf")}}, "weights.queue"),
        ("weighted", {"weights": {"queue": 0.0}}, "weights"),
        ("weighted", {"weights": [1, 2]}, "weights"),
    ],
)
def test_bad_params_name_the_key(name: str, params: dict[str, object], key: str) -> None:
    with pytest.raises(PolicyParamError) as info:
        make_dispatch_policy(name, params)
    assert info.value.key == key
    assert str(info.value).startswith(f"params.{key}: ")


def test_params_must_be_a_mapping() -> None:
    with pytest.raises(PolicyParamError, match=r"^params: must be a mapping, got list"):
        make_dispatch_policy("least_load", [1])  # type: ignore[arg-type]


def test_unknown_policy_lists_known_ones() -> None:
    with pytest.raises(ValueError, match=r"policy: unknown dispatch policy 'fastest'.*least_load"):
        make_dispatch_policy("fastest", {})


def test_policies_import_nothing_impure() -> None:
    code = (
        "import sys, policies.dispatch, policies.live_view, policies.prefix; "
        "bad = [m for m in ('torch', 'ray', 'grpc', 'triton', 'actors', 'kernels') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("name", ALL_POLICIES)
def test_random_views_never_yield_an_unhealthy_or_full_replica(name: str) -> None:
    """Seeded fuzz over odd views (zero totals, huge queues, empty caches) for every policy."""
    rng = random.Random(1234)
    p = policy(name, max_queue=3)
    hashes = tuple(block_hashes(list(range(16 * 8)), 16))
    for trial in range(150):
        replicas = [
            replica(
                f"r{i}",
                healthy=rng.random() > 0.3,
                running=rng.randint(0, 10),
                waiting=rng.randint(0, 6),
                inflight_dispatches=rng.randint(0, 3),
                kv_blocks_free=(free := rng.randint(0, 50)),
                kv_blocks_total=free + rng.randint(0, 50),
                max_running=rng.randint(1, 8),
                prefix_hashes=frozenset(hashes[: rng.randint(0, 8)]),
                adapters_resident=frozenset(rng.sample(["a", "b", "c"], rng.randint(0, 2))),
            )
            for i in range(rng.randint(0, 6))
        ]
        req = meta(
            f"q{trial}",
            prompt=rng.randint(0, 200),
            priority=rng.randint(-2, 2),
            adapter_id=rng.choice([None, "a", "b"]),
            prefix_hashes=hashes[: rng.randint(0, 8)],
        )
        open_reps = [r for r in replicas if r.healthy and not r.is_full(3)]
        adapter = req.adapter_id
        open_ids = {
            r.replica_id
            for r in open_reps
            if adapter is None or adapter in r.adapters_loaded | r.adapters_resident
        }
        decision = p.choose(view(*replicas), req)
        if open_ids:
            assert decision.replica_id in open_ids, (trial, decision)
        else:
            assert decision.replica_id is None
            # Full everywhere is overload (429); no replica serving the adapter is not.
            assert decision.overloaded == (not open_reps and any(r.healthy for r in replicas))


def test_migration_target_has_room_and_is_not_the_source() -> None:
    from policies.migration import pick_target

    v = view(
        replica("r0", kv_blocks_free=900, running=1),  # the source
        replica("r1", kv_blocks_free=50, running=10),  # room for 39 more blocks
        replica("r2", kv_blocks_free=400, running=2),
        replica("r3", kv_blocks_free=990, healthy=False),
    )
    assert pick_target(v, "r0", 10) == "r2"
    assert pick_target(v, "r2", 10) == "r0"
    assert pick_target(v, "r2", 1000) is None  # nobody has room
    assert pick_target(v, "r0", 39) == "r2" and pick_target(v, "r1", 398) == "r0"


def test_rebalance_moves_from_pressed_to_idle_replicas() -> None:
    from policies.migration import RebalanceParams, rebalance_moves

    p = RebalanceParams(high_kv_usage=0.9, low_kv_usage=0.6, max_moves=2)
    v = view(
        replica("r0", kv_blocks_free=50, running=10),  # 94 % used counting growth: pressed
        replica("r1", kv_blocks_free=900, running=2),  # idle
        replica("r2", kv_blocks_free=600, running=4, waiting=3),  # a queue: pressed
        replica("r3", kv_blocks_free=700, running=1),  # idle
        replica("r4", kv_blocks_free=990, healthy=False),  # dead: never a destination
    )
    assert rebalance_moves(v, p) == [("r0", "r1"), ("r2", "r3")]
    assert rebalance_moves(v, RebalanceParams(max_moves=1)) == [("r0", "r1")]
    calm = view(replica("r0", kv_blocks_free=500, running=3), replica("r1", kv_blocks_free=900))
    assert rebalance_moves(calm, p) == []
    with pytest.raises(ValueError, match="low_kv_usage"):
        RebalanceParams(high_kv_usage=0.5, low_kv_usage=0.6)


def test_high_priority_requests_keep_their_headroom() -> None:
    from policies.migration import RebalanceParams, rebalance_moves

    p = RebalanceParams(priority_headroom=0.2)
    # 15 % free counting growth, 1 high-priority request among 4: normal ones must leave.
    v = view(
        replica("r0", kv_blocks_free=154, running=4, high_priority_running=1),
        replica("r1", kv_blocks_free=800, running=1, high_priority_running=1),
        replica("r2", kv_blocks_free=700, running=2),
    )
    assert rebalance_moves(v, p) == [("r0", "r2")]  # to the idle one with no priority work
    only_urgent = view(
        replica("r0", kv_blocks_free=154, running=4, high_priority_running=4),
        replica("r2", kv_blocks_free=700, running=2),
    )
    assert rebalance_moves(only_urgent, p) == []  # nothing of normal priority to move
    assert rebalance_moves(v, RebalanceParams(priority_headroom=0.0)) == []


@pytest.mark.parametrize("name", dispatch_policy_names())
def test_adapter_requests_go_only_to_replicas_that_serve_the_adapter(name: str) -> None:
    """Every policy: an adapter request never lands where the adapter is not loaded (e.g. while
    a load is still reaching the fleet), however idle that replica is; none serving it: refused."""
    v = view(
        replica("idle", running=0, waiting=0),
        replica("busy", running=40, waiting=3, adapters_loaded=frozenset({"sql"})),
    )
    p = policy(name)
    for i in range(20):
        assert p.choose(v, meta(f"r{i}", adapter_id="sql")).replica_id == "busy"
    refused = p.choose(v, meta("x", adapter_id="poet"))
    assert refused.replica_id is None and "adapter poet" in refused.reason
    assert p.choose(v, meta("base")).replica_id is not None  # base requests anywhere


@pytest.mark.parametrize("name", dispatch_policy_names())
def test_adapter_requests_stay_where_the_adapter_is_on_device_within_the_slack(name: str) -> None:
    """Every policy: traffic of an adapter goes to the replica holding it in device memory (no
    paging elsewhere) while that replica is at most adapter_affinity_slack busier than the
    idlest; beyond that, the others take it too."""
    sql = frozenset({"sql"})

    def fleet(hot_running: int) -> ClusterView:
        return view(
            replica("hot", running=hot_running, adapters_loaded=sql, adapters_resident=sql),
            replica("cold1", running=0, adapters_loaded=sql),
            replica("cold2", running=0, adapters_loaded=sql),
        )

    p = policy(name)
    near = fleet(hot_running=3)  # load 3/8 = 0.375 <= 0 + 0.5
    assert {p.choose(near, meta(f"a{i}", adapter_id="sql")).replica_id for i in range(12)} == {
        "hot"
    }
    if name == "weighted":
        return  # beyond the slack, weighted scores residency against load itself
    far = fleet(hot_running=7)  # load 0.875 > 0.5: the idle replicas take it
    picks = {p.choose(far, meta(f"b{i}", adapter_id="sql")).replica_id for i in range(12)}
    assert picks & {"cold1", "cold2"}
    strict = policy(name, adapter_affinity_slack=0.0)
    picks = {strict.choose(near, meta(f"c{i}", adapter_id="sql")).replica_id for i in range(12)}
    assert picks & {"cold1", "cold2"}
