"""Dispatch policies: given a ClusterView and a request's metadata, pick a replica (or none).

Every policy first drops unhealthy replicas and replicas whose queue is full (`max_queue`,
counting in-flight dispatches), then ranks the rest. Load always includes
`inflight_dispatches`, so routers that add their own dispatches to their snapshot
(ClusterView.add_inflight) spread a burst instead of herding onto the replica that looked idlest
in the last report. A decision with `replica_id=None` tells the caller to answer 503 (no healthy
replica) or 429 (all queues full); `DispatchDecision.overloaded` says which.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from policies.cluster_view import ClusterView, ReplicaView, RequestMeta
from policies.params import CommonParams, PolicyParamError, parse_params, require
from policies.prefix import leading_matches
from policies.scorers import SCORERS, WeightedParams, weighted_totals

REASON_NO_HEALTHY = "no healthy replica"
REASON_ALL_FULL = "all healthy replicas have full queues"


@dataclass(frozen=True)
class DispatchDecision:
    replica_id: str | None
    reason: str

    @property
    def overloaded(self) -> bool:
        """No replica chosen because every queue is full (429) rather than none healthy (503)."""
        return self.replica_id is None and self.reason == REASON_ALL_FULL


class DispatchPolicy(Protocol):
    name: str

    def choose(self, view: ClusterView, req: RequestMeta) -> DispatchDecision: ...


def open_replicas(
    view: ClusterView, max_queue: int
) -> tuple[list[ReplicaView], DispatchDecision | None]:
    """Healthy replicas with room in their queue, or the refusal when there are none."""
    candidates: list[ReplicaView] = []
    any_healthy = False
    for r in view.replicas:
        if not r.healthy:
            continue
        any_healthy = True
        # ReplicaView.is_full inlined: this loop runs over every replica on every request.
        spare_slots = r.max_running - r.running
        if r.waiting + r.inflight_dispatches - (spare_slots if spare_slots > 0 else 0) < max_queue:
            candidates.append(r)
    if not any_healthy:
        return [], DispatchDecision(None, REASON_NO_HEALTHY)
    if not candidates:
        return [], DispatchDecision(None, REASON_ALL_FULL)
    return candidates, None


def least_loaded(candidates: Sequence[ReplicaView]) -> ReplicaView:
    # Ties go to more free KV, then to the replica id, so the choice is deterministic.
    return min(candidates, key=_load_key)


def _load_key(r: ReplicaView) -> tuple[float, float, str]:
    # ReplicaView.load and kv_free_fraction inlined (hot path): lower load, then more free KV.
    load = (r.running + r.waiting + r.inflight_dispatches) / (r.max_running or 1)
    free = r.kv_blocks_free / r.kv_blocks_total if r.kv_blocks_total > 0 else 0.0
    return (load, -free, r.replica_id)


class RoundRobin:
    name = "round_robin"

    @dataclass(frozen=True)
    class Params(CommonParams):
        start: int = 0

    def __init__(self, params: Params) -> None:
        self.params = params
        self._next = itertools.count(params.start)  # next() on a count is atomic under the GIL

    def choose(self, view: ClusterView, req: RequestMeta) -> DispatchDecision:
        candidates, refusal = open_replicas(view, self.params.max_queue)
        if refusal:
            return refusal
        replica = candidates[next(self._next) % len(candidates)]
        return DispatchDecision(replica.replica_id, "round_robin")


class LeastLoad:
    name = "least_load"
    Params = CommonParams

    def __init__(self, params: CommonParams) -> None:
        self.params = params

    def choose(self, view: ClusterView, req: RequestMeta) -> DispatchDecision:
        candidates, refusal = open_replicas(view, self.params.max_queue)
        if refusal:
            return refusal
        replica = least_loaded(candidates)
        return DispatchDecision(replica.replica_id, f"least_load: load {replica.load:.3f}")


class PowerOfTwo:
    name = "power_of_two"

    @dataclass(frozen=True)
    class Params(CommonParams):
        seed: int | None = None  # None: seeded from the OS; the simulator passes one

    def __init__(self, params: Params) -> None:
        self.params = params
        self._rng = random.Random(params.seed)

    def choose(self, view: ClusterView, req: RequestMeta) -> DispatchDecision:
        candidates, refusal = open_replicas(view, self.params.max_queue)
        if refusal:
            return refusal
        if len(candidates) == 1:
            return DispatchDecision(candidates[0].replica_id, "power_of_two: only candidate")
        replica = least_loaded(self._rng.sample(candidates, 2))
        return DispatchDecision(replica.replica_id, f"power_of_two: load {replica.load:.3f}")


class Llumnix:
    """Llumnix's virtual usage: rank by KV freeness after reserving what queued work will need.

    freeness = (free blocks - reserved) / (requests on the replica + 1), where reserved covers one
    growth block per running request, the blocks of pending requests (estimated), the new
    request's own prompt, and — for normal-priority requests only — a headroom fraction of the
    cache kept for high-priority requests, so those find room on the replica that takes them.
    """

    name = "llumnix"

    @dataclass(frozen=True)
    class Params(CommonParams):
        growth_blocks_per_running: int = 1
        pending_blocks: int | None = None  # per pending request; None: the new request's size
        headroom_fraction: float = 0.1
        high_priority_max: int = -1  # priority <= this is high (lower value is served first)

        def __post_init__(self) -> None:
            super().__post_init__()
            require(
                self.growth_blocks_per_running >= 0, "growth_blocks_per_running", "must be >= 0"
            )
            if self.pending_blocks is not None:
                require(self.pending_blocks >= 0, "pending_blocks", "must be >= 0")
            require(
                0.0 <= self.headroom_fraction < 1.0,
                "headroom_fraction",
                f"must be in [0, 1), got {self.headroom_fraction}",
            )

    def __init__(self, params: Params) -> None:
        self.params = params

    def freeness(self, replica: ReplicaView, req: RequestMeta) -> float:
        p = self.params
        own_blocks = req.blocks_needed(replica.block_size)
        per_pending = p.pending_blocks if p.pending_blocks is not None else max(1, own_blocks)
        pending = replica.waiting + replica.inflight_dispatches
        reserved = replica.running * p.growth_blocks_per_running + pending * per_pending
        if req.priority > p.high_priority_max:
            reserved += p.headroom_fraction * replica.kv_blocks_total
        virtual_free = replica.kv_blocks_free - reserved - own_blocks
        if virtual_free < 0:
            # Dividing a deficit by the batch size would make busier replicas look better.
            return float(virtual_free)
        return virtual_free / (replica.running + pending + 1)

    def choose(self, view: ClusterView, req: RequestMeta) -> DispatchDecision:
        candidates, refusal = open_replicas(view, self.params.max_queue)
        if refusal:
            return refusal
        best = min(candidates, key=lambda r: (-self.freeness(r, req), *_load_key(r)))
        return DispatchDecision(
            best.replica_id, f"llumnix: freeness {self.freeness(best, req):.2f}"
        )


class PrefixAffinity:
    """Most leading prompt blocks cached wins (ties: lower load), unless that replica is far busier.

    Below `min_match_blocks`, or when the best match carries more than `balance_abs_threshold`
    requests beyond the least-loaded replica, it routes like least_load (SGLang's cache-aware
    router makes the same trade: affinity only while the cluster stays balanced).
    """

    name = "prefix_affinity"

    @dataclass(frozen=True)
    class Params(CommonParams):
        min_match_blocks: int = 1
        balance_abs_threshold: int = 16

        def __post_init__(self) -> None:
            super().__post_init__()
            require(self.min_match_blocks >= 1, "min_match_blocks", "must be >= 1")
            require(self.balance_abs_threshold >= 0, "balance_abs_threshold", "must be >= 0")

    def __init__(self, params: Params) -> None:
        self.params = params

    def choose(self, view: ClusterView, req: RequestMeta) -> DispatchDecision:
        candidates, refusal = open_replicas(view, self.params.max_queue)
        if refusal:
            return refusal
        idlest = least_loaded(candidates)
        matches = [leading_matches(req.prefix_hashes, r.prefix_hashes) for r in candidates]
        best = min(range(len(candidates)), key=lambda i: (-matches[i], *_load_key(candidates[i])))
        matched, replica = matches[best], candidates[best]
        if matched < self.params.min_match_blocks:
            return DispatchDecision(idlest.replica_id, f"prefix_affinity: {matched} blocks, idlest")
        excess = (replica.running + replica.pending) - (idlest.running + idlest.pending)
        if excess > self.params.balance_abs_threshold:
            return DispatchDecision(
                idlest.replica_id, f"prefix_affinity: best match {excess} requests busier, idlest"
            )
        return DispatchDecision(replica.replica_id, f"prefix_affinity: {matched} blocks cached")


class Weighted:
    """llm-d style: a weighted sum of named scorers in [0, 1]; the highest total wins."""

    name = "weighted"
    Params = WeightedParams

    def __init__(self, params: WeightedParams) -> None:
        self.params = params

    def choose(self, view: ClusterView, req: RequestMeta) -> DispatchDecision:
        candidates, refusal = open_replicas(view, self.params.max_queue)
        if refusal:
            return refusal
        totals = weighted_totals(candidates, req, self.params.weights)
        best = min(
            range(len(candidates)),
            key=lambda i: (-totals[i], candidates[i].load, candidates[i].replica_id),
        )
        return DispatchDecision(candidates[best].replica_id, f"weighted: score {totals[best]:.3f}")


_POLICIES: Mapping[str, Any] = MappingProxyType(
    {
        cls.name: cls
        for cls in (RoundRobin, LeastLoad, PowerOfTwo, Llumnix, PrefixAffinity, Weighted)
    }
)


def dispatch_policy_names() -> tuple[str, ...]:
    return tuple(_POLICIES)


def make_dispatch_policy(name: str, params: Mapping[str, Any] | None = None) -> DispatchPolicy:
    """The policy `name` configured with `params`; ValueError naming the bad name or key."""
    cls = _POLICIES.get(name)
    if cls is None:
        raise ValueError(
            f"policy: unknown dispatch policy {name!r} (known: {', '.join(_POLICIES)})"
        )
    return cls(parse_params(cls.Params, params, name))


__all__ = [
    "REASON_ALL_FULL",
    "REASON_NO_HEALTHY",
    "SCORERS",
    "DispatchDecision",
    "DispatchPolicy",
    "PolicyParamError",
    "dispatch_policy_names",
    "make_dispatch_policy",
]
