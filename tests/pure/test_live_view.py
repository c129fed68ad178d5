"""LiveView and the column-wise policies against the per-replica definitions they replaced.

`reference_choose` is each policy as it was written on ReplicaView objects (one replica at a
time, properties and key tuples). The policies now decide on a LiveView's columns; these seeded
fuzz tests require the same replica and the same reason, decision by decision, on odd views
(ties, zero totals, full queues, mixed block sizes) and while in-flight counts and health change.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest

from policies.cluster_view import ClusterView, ReplicaState, ReplicaView, RequestMeta
from policies.dispatch import (
    REASON_ALL_FULL,
    REASON_NO_HEALTHY,
    DispatchDecision,
    DispatchPolicy,
    make_dispatch_policy,
)
from policies.live_view import LiveView
from policies.prefix import block_hashes, leading_matches
from policies.scorers import weighted_totals

Decision = tuple[str | None, str]

# ---- the reference: the policies as first written, on ReplicaView objects -------------------


def _open(
    view: ClusterView, max_queue: int, adapter: str | None = None, slack: float = 0.5
) -> tuple[list[ReplicaView], Decision | None]:
    healthy = [r for r in view.replicas if r.healthy]
    candidates = [r for r in healthy if not r.is_full(max_queue)]
    if not healthy:
        return [], (None, REASON_NO_HEALTHY)
    if not candidates:
        return [], (None, REASON_ALL_FULL)
    if adapter is not None:
        candidates = [r for r in candidates if adapter in r.adapters_loaded | r.adapters_resident]
        if not candidates:
            return [], (None, f"no open replica serves adapter {adapter}")
        resident = [r for r in candidates if adapter in r.adapters_resident]
        idlest = min(_load_key(r)[0] for r in candidates)
        if resident and min(_load_key(r)[0] for r in resident) <= idlest + slack:
            candidates = resident
    return candidates, None


def _load_key(r: ReplicaView) -> tuple[float, float, str]:
    load = (r.running + r.waiting + r.inflight_dispatches) / (r.max_running or 1)
    free = r.kv_blocks_free / r.kv_blocks_total if r.kv_blocks_total > 0 else 0.0
    return (load, -free, r.replica_id)


def _freeness(p: Any, r: ReplicaView, req: RequestMeta) -> float:
    own_blocks = req.blocks_needed(r.block_size)
    per_pending = p.pending_blocks if p.pending_blocks is not None else max(1, own_blocks)
    pending = r.waiting + r.inflight_dispatches
    reserved = r.running * p.growth_blocks_per_running + pending * per_pending
    if req.priority > p.high_priority_max:
        reserved += p.headroom_fraction * r.kv_blocks_total
    virtual_free = r.kv_blocks_free - reserved - own_blocks
    if virtual_free < 0:
        return float(virtual_free)
    return virtual_free / (r.running + pending + 1)


def _min_max_low_is_good(values: list[int]) -> list[float]:
    lo, hi = min(values), max(values)
    if hi == lo:
        return [1.0] * len(values)
    return [(hi - v) / (hi - lo) for v in values]


def _scores(name: str, cands: list[ReplicaView], req: RequestMeta) -> list[float]:
    if name == "kv_free":
        return [r.kv_free_fraction for r in cands]
    if name == "queue":
        return _min_max_low_is_good([r.pending for r in cands])
    if name == "inflight":
        return _min_max_low_is_good([r.inflight_dispatches for r in cands])
    if name == "load":
        return [max(0.0, 1.0 - r.load) for r in cands]
    if name == "prefix":
        if not req.prefix_hashes:
            return [0.0] * len(cands)
        total = len(req.prefix_hashes)
        return [leading_matches(req.prefix_hashes, r.prefix_hashes) / total for r in cands]
    assert name == "adapter_resident"
    if req.adapter_id is None:
        return [0.0] * len(cands)
    return [1.0 if req.adapter_id in r.adapters_resident else 0.0 for r in cands]


def reference_choose(
    policy: DispatchPolicy, view: ClusterView, req: RequestMeta, rng: random.Random, rr: list[int]
) -> Decision:
    p: Any = policy.params  # type: ignore[attr-defined]
    cands, refusal = _open(view, p.max_queue, req.adapter_id, p.adapter_affinity_slack)
    if refusal:
        return refusal
    name = policy.name
    if name == "round_robin":
        rr[0] += 1
        return cands[(rr[0] - 1) % len(cands)].replica_id, "round_robin"
    if name == "least_load":
        r = min(cands, key=_load_key)
        return r.replica_id, f"least_load: load {r.load:.3f}"
    if name == "power_of_two":
        if len(cands) == 1:
            return cands[0].replica_id, "power_of_two: only candidate"
        r = min(rng.sample(cands, 2), key=_load_key)
        return r.replica_id, f"power_of_two: load {r.load:.3f}"
    if name == "llumnix":
        r = min(cands, key=lambda c: (-_freeness(p, c, req), *_load_key(c)))
        return r.replica_id, f"llumnix: freeness {_freeness(p, r, req):.2f}"
    if name == "prefix_affinity":
        idlest = min(cands, key=_load_key)
        matches = [leading_matches(req.prefix_hashes, r.prefix_hashes) for r in cands]
        best = min(range(len(cands)), key=lambda i: (-matches[i], *_load_key(cands[i])))
        matched, r = matches[best], cands[best]
        if matched < p.min_match_blocks:
            return idlest.replica_id, f"prefix_affinity: {matched} blocks, idlest"
        excess = (r.running + r.pending) - (idlest.running + idlest.pending)
        if excess > p.balance_abs_threshold:
            return (
                idlest.replica_id,
                f"prefix_affinity: best match {excess} requests busier, idlest",
            )
        return r.replica_id, f"prefix_affinity: {matched} blocks cached"
    assert name == "weighted"
    totals = [0.0] * len(cands)
    for scorer, weight in p.weights.items():
        if weight == 0.0:
            continue
        for i, score in enumerate(_scores(scorer, cands, req)):
            totals[i] += weight * score
    best = min(range(len(cands)), key=lambda i: (-totals[i], cands[i].load, cands[i].replica_id))
    return cands[best].replica_id, f"weighted: score {totals[best]:.3f}"


# ---- random views and requests --------------------------------------------------------------

HASHES = tuple(block_hashes(list(range(16 * 8)), 16))
OTHER_HASHES = tuple(block_hashes(list(range(1000, 1000 + 16 * 8)), 16))
HEADROOM = ("headroom_fraction", 0.1)

POLICY_PARAMS: list[tuple[str, dict[str, Any]]] = [
    ("round_robin", {}),
    ("least_load", {}),
    ("power_of_two", {"seed": 5}),
    ("llumnix", {}),
    ("llumnix", {"headroom_fraction": 0.0, "pending_blocks": 3, "growth_blocks_per_running": 2}),
    ("llumnix", {"headroom_fraction": 0.37, "high_priority_max": 0}),
    ("prefix_affinity", {}),
    ("prefix_affinity", {"min_match_blocks": 3, "balance_abs_threshold": 2}),
    ("weighted", {}),
    ("weighted", {"weights": {"load": 1.3, "queue": 0.7, "prefix": 0.3}}),
    ("weighted", {"weights": {"adapter_resident": 2.0, "kv_free": 1.1, "inflight": 0.37}}),
]


def random_replica(
    rng: random.Random, i: int, *, ties: bool, block_sizes: tuple[int, ...]
) -> ReplicaView:
    small = ties  # few distinct values, so equal keys and equal scores are common
    free = rng.randint(0, 6) * 10 if small else rng.randint(-5, 8000)
    return ReplicaView(
        replica_id=f"r{i:02d}",
        address=f"10.0.0.{i}:7000",
        state=ReplicaState.READY if rng.random() > 0.15 else ReplicaState.DEAD,
        running=rng.randint(0, 4) if small else rng.randint(0, 300),
        waiting=rng.randint(0, 3) if small else rng.randint(0, 40),
        inflight_dispatches=rng.randint(0, 2),
        kv_blocks_free=free,
        kv_blocks_total=rng.choice([0, 60, max(free, 0) + rng.randint(0, 9000)]),
        block_size=rng.choice(block_sizes),
        max_running=rng.choice([0, 4, 8, 256]),
        prefix_hashes=frozenset(rng.choice([HASHES, OTHER_HASHES])[: rng.randint(0, 8)]),
        adapters_resident=frozenset(rng.sample(["a", "b", "c"], rng.randint(0, 2))),
        version=rng.randint(0, 5),
    )


def random_view(rng: random.Random) -> ClusterView:
    ties = rng.random() < 0.5
    block_sizes = (16,) if rng.random() < 0.7 else (8, 16, 32)
    n = rng.choice([0, 1, 2, 5, 12, 40])
    replicas = tuple(random_replica(rng, i, ties=ties, block_sizes=block_sizes) for i in range(n))
    return ClusterView(replicas, timestamp=1.0, generation=1)


def random_meta(rng: random.Random, k: int) -> RequestMeta:
    hashes = rng.choice([HASHES, OTHER_HASHES])
    return RequestMeta(
        f"q{k}",
        num_prompt_tokens=rng.choice([0, 1, 16, 17, rng.randint(0, 4000)]),
        max_tokens=16,
        priority=rng.randint(-2, 2),
        adapter_id=rng.choice([None, "a", "b"]),
        prefix_hashes=hashes[: rng.randint(0, 8)],
    )


def pair(name: str, params: dict[str, Any], max_queue: int) -> tuple[DispatchPolicy, random.Random]:
    """The policy under test, and an RNG in the state its own starts in (power_of_two)."""
    policy = make_dispatch_policy(name, {**params, "max_queue": max_queue})
    return policy, random.Random(params.get("seed"))


def as_pair(decision: DispatchDecision) -> Decision:
    return decision.replica_id, decision.reason


# ---- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "params"), POLICY_PARAMS)
def test_choose_matches_the_per_replica_definition(name: str, params: dict[str, Any]) -> None:
    rng = random.Random(f"{name} {sorted(params.items())}")
    for trial in range(120):
        max_queue = rng.choice([1, 3, 64])
        policy, ref_rng = pair(name, params, max_queue)
        rr = [0]
        v = random_view(rng)
        for k in range(4):  # the same view object again: the cached LiveView must be reused
            req = random_meta(rng, k)
            got = as_pair(policy.choose(v, req))
            assert got == reference_choose(policy, v, req, ref_rng, rr), (trial, k)


@pytest.mark.parametrize(("name", "params"), POLICY_PARAMS)
def test_decisions_track_inflight_and_health_changes(name: str, params: dict[str, Any]) -> None:
    """A router's LiveView, changed in place, decides as a fresh view with the same counts."""
    rng = random.Random(f"live {name} {sorted(params.items())}")
    for trial in range(25):
        max_queue = rng.choice([2, 5, 64])
        policy, ref_rng = pair(name, params, max_queue)
        rr = [0]
        live = LiveView(random_view(rng))
        for step in range(30):
            if live.n and rng.random() < 0.5:
                i = rng.randrange(live.n)
                if rng.random() < 0.1:
                    live.set_healthy(i, not live.healthy[i])
                else:
                    live.add_inflight(i, rng.choice([-3, -1, 1, 1, 2]))
            req = random_meta(rng, step)
            got = as_pair(policy.decide(live, req))
            assert got == reference_choose(policy, live.to_view(), req, ref_rng, rr), (trial, step)
            if got[0] is not None:
                live.add_inflight(live.index[got[0]], 1)  # as the router does


def test_columns_follow_inflight_changes_and_floor_at_zero() -> None:
    v = ClusterView(
        (
            ReplicaView("a", "x:1", running=2, waiting=1, max_running=4, kv_blocks_total=10),
            ReplicaView("b", "x:2", running=0, max_running=4, inflight_dispatches=1),
        )
    )
    live = LiveView(v)
    version = live.version
    live.add_inflight(0, 3)
    assert (live.inflight[0], live.pending[0], live.busy[0]) == (3, 4, 6)
    assert live.load_key[0] == (6 / 4, -0.0, "a") and live.version > version
    live.add_inflight(1, -5)
    assert live.inflight[1] == 0 and live.pending[1] == 0
    assert live.to_view().replicas[0] == replace(v.replicas[0], inflight_dispatches=3)
    assert v.replicas[0].inflight_dispatches == 0  # the frozen view is untouched


def test_open_candidates_cache_is_invalidated_when_a_queue_fills_or_drains() -> None:
    v = ClusterView(tuple(ReplicaView(f"r{i}", "x:1", running=4, max_running=4) for i in range(3)))
    live = LiveView(v)
    assert live.open_indices(2) == [0, 1, 2]
    live.add_inflight(1, 1)
    assert live.open_indices(2) == [0, 1, 2]  # queue 1 < 2: still open
    live.add_inflight(1, 1)
    assert live.open_indices(2) == [0, 2]  # queue 2: full
    assert live.open_indices(3) == [0, 1, 2]  # another max_queue is computed afresh
    live.add_inflight(1, -1)
    assert live.open_indices(2) == [0, 1, 2]
    live.set_healthy(0, False)
    assert live.open_indices(2) == [1, 2]


def test_choose_does_not_reuse_columns_across_views() -> None:
    """choose() keeps the last view's LiveView: a view derived with add_inflight is a new one."""
    v = ClusterView(tuple(ReplicaView(f"r{i}", "x:1", max_running=8) for i in range(3)))
    p = make_dispatch_policy("least_load")
    assert p.choose(v, RequestMeta("q", 1, 1)).replica_id == "r0"
    bumped = v.add_inflight("r0", 2)
    assert p.choose(bumped, RequestMeta("q", 1, 1)).replica_id == "r1"
    assert p.choose(v, RequestMeta("q", 1, 1)).replica_id == "r0"


def test_per_view_memo_lives_with_its_view() -> None:
    hashes = HASHES[:3]
    v1 = ClusterView((ReplicaView("a", "x:1", prefix_hashes=frozenset(hashes)),))
    v2 = ClusterView(
        (ReplicaView("a", "x:1"), ReplicaView("b", "x:2", prefix_hashes=frozenset(hashes)))
    )
    l1, l2 = LiveView(v1), LiveView(v2)
    assert l1.prefix_holders(hashes[0]) == [0]
    assert l2.prefix_holders(hashes[0]) == [1]
    calls: list[int] = []
    build = lambda live: calls.append(1) or len(live.ids)  # noqa: E731
    assert l1.cached("k", build) == 1 and l1.cached("k", build) == 1 and len(calls) == 1
    assert l2.cached("k", build) == 2 and len(calls) == 2
    # In-flight changes keep per-view constants (they depend on the report only).
    l1.add_inflight(0, 1)
    assert l1.cached("k", build) == 1 and len(calls) == 2


@pytest.mark.parametrize(
    ("name", "params"), [pp for pp in POLICY_PARAMS if pp[0] in ("llumnix", "weighted")]
)
def test_freeness_and_weighted_totals_are_bit_identical(name: str, params: dict[str, Any]) -> None:
    """Not only the same winner: the same floats, so the arithmetic order was kept."""
    rng = random.Random(f"bits {name} {sorted(params.items())}")
    policy: Any = make_dispatch_policy(name, params)
    for _ in range(150):
        live = LiveView(random_view(rng))
        req = random_meta(rng, 0)
        if name == "llumnix":
            expected = [_freeness(policy.params, r, req) for r in live.replicas]
            assert policy.freeness_column(live, req) == expected
            continue
        cands = live.open_indices(rng.choice([1, 3, 64]))
        if not cands:
            continue
        chosen = [live.replicas[i] for i in cands]
        expected = [0.0] * len(chosen)
        for scorer, weight in policy.params.weights.items():
            for i, score in enumerate(_scores(scorer, chosen, req)):
                expected[i] += weight * score
        assert weighted_totals(live, cands, req, policy.params.weights) == expected


def test_prefix_index_answers_as_the_scans_did() -> None:
    """After enough lookups a view indexes every cached hash; answers must not change."""
    rng = random.Random(11)
    pool = [f"h{k}" for k in range(400)]
    view = ClusterView(
        tuple(
            ReplicaView(f"r{i}", "x:1", prefix_hashes=frozenset(rng.sample(pool, 40)))
            for i in range(30)
        )
    )
    live = LiveView(view)
    expected = {h: [i for i, r in enumerate(view.replicas) if h in r.prefix_hashes] for h in pool}
    for h in pool + ["absent"] + pool:
        assert list(live.prefix_holders(h)) == expected.get(h, [])
    assert live._prefix_index is not None  # the second pass was answered by the index


def test_follow_patches_changed_replicas_into_the_same_columns_as_a_fresh_build() -> None:
    """choose() on a patched view (the controller's case) derives its columns from the last."""
    rng = random.Random(21)
    view = ClusterView(
        tuple(random_replica(rng, i, ties=False, block_sizes=(16,)) for i in range(12))
    )
    live = LiveView(view)
    for step in range(80):
        replicas = list(view.replicas)
        for _ in range(rng.choice([0, 1, 1, 2, 5])):
            i = rng.randrange(len(replicas))
            replicas[i] = random_replica(
                rng, rng.choice([i, 40 + i]), ties=True, block_sizes=(8, 16)
            )
        view = ClusterView(tuple(replicas), generation=step)
        live = live.follow(view)
        fresh = LiveView(view)
        for name in (*LiveView._COLUMNS, "index", "uniform_block_size", "n", "replicas"):
            assert getattr(live, name) == getattr(fresh, name), (step, name)
    changed = LiveView(view)
    changed.add_inflight(0, 1)
    assert changed.follow(view).inflight == fresh.inflight  # a changed LiveView is not followed


def test_choose_on_patched_views_matches_the_reference() -> None:
    rng = random.Random(5)
    for name, params in POLICY_PARAMS:
        policy, ref_rng = pair(name, params, 64)
        rr = [0]
        view = ClusterView(
            tuple(random_replica(rng, i, ties=True, block_sizes=(16,)) for i in range(9))
        )
        for k in range(40):
            req = random_meta(rng, k)
            got = as_pair(policy.choose(view, req))
            assert got == reference_choose(policy, view, req, ref_rng, rr), (name, k)
            if got[0] is not None:
                view = view.add_inflight(got[0])  # one replica patched, as the controller does
