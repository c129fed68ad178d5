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
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

from policies.cluster_view import ClusterView, RequestMeta
from policies.live_view import LiveView
from policies.params import CommonParams, PolicyParamError, parse_params, require
from policies.prefix import leading_matches
from policies.scorers import SCORERS, WeightedParams, weighted_totals

REASON_NO_HEALTHY = "no healthy replica"
REASON_ALL_FULL = "all healthy replicas have full queues"


class DispatchDecision(NamedTuple):
    # A NamedTuple, not a frozen dataclass: one is built per request, and this is 3x cheaper.
    replica_id: str | None
    reason: str

    @property
    def overloaded(self) -> bool:
        """No replica chosen because every queue is full (429) rather than none healthy (503)."""
        return self.replica_id is None and self.reason == REASON_ALL_FULL


class DispatchPolicy(Protocol):
    name: str

    def choose(self, view: ClusterView, req: RequestMeta) -> DispatchDecision: ...

    def decide(self, live: LiveView, req: RequestMeta) -> DispatchDecision: ...


class _Policy(ABC):
    """What every policy shares: `choose` on a frozen view runs `decide` on its LiveView.

    The LiveView of the last view seen is kept (the view is frozen, so its columns stay valid
    for as long as the same object comes back); a new view object, such as one derived with
    `add_inflight`, gets new columns, rebuilt only where its replicas are new objects.
    """

    name = ""
    params: CommonParams

    def __init__(self) -> None:
        self._last: tuple[ClusterView, LiveView] | None = None

    def choose(self, view: ClusterView, req: RequestMeta) -> DispatchDecision:
        last = self._last
        if last is None:
            live = LiveView(view)
        elif last[0] is view:
            live = last[1]
        else:
            live = last[1].follow(view)
        self._last = (view, live)
        return self.decide(live, req)

    @abstractmethod
    def decide(self, live: LiveView, req: RequestMeta) -> DispatchDecision:
        """The policy's pick on `live` (each policy defines it)."""

    def _open(self, live: LiveView, req: RequestMeta) -> tuple[list[int], DispatchDecision | None]:
        """Healthy replicas with room in their queue that serve the request's LoRA adapter, or
        the refusal when there are none."""
        candidates = live.open_indices(self.params.max_queue)
        adapter = req.adapter_id
        if adapter is not None and candidates:
            reps = live.replicas  # on the device implies loaded
            serving = [
                i
                for i in candidates
                if adapter in reps[i].adapters_loaded or adapter in reps[i].adapters_resident
            ]
            if not serving:
                return serving, DispatchDecision(None, f"no open replica serves adapter {adapter}")
            candidates = self._affine(live, serving, adapter)
        if candidates:
            return candidates, None
        if live.any_healthy():
            return candidates, DispatchDecision(None, REASON_ALL_FULL)
        return candidates, DispatchDecision(None, REASON_NO_HEALTHY)

    def _affine(self, live: LiveView, serving: list[int], adapter: str) -> list[int]:
        """Of the replicas serving `adapter`, those with it in device memory, while they are
        not `adapter_affinity_slack` busier than the idlest serving replica."""
        reps = live.replicas
        resident = [i for i in serving if adapter in reps[i].adapters_resident]
        if not resident or len(resident) == len(serving):
            return serving
        idlest = min(live.load(i) for i in serving)
        if min(live.load(i) for i in resident) <= idlest + self.params.adapter_affinity_slack:
            return resident
        return serving


def _best_of(values: list[float], ties: Callable[[int], Any]) -> int:
    """Position of the highest value; equal highest values are ranked by `ties` (then order)."""
    top = max(values)
    first = values.index(top)
    if values.count(top) == 1:
        return first
    return min((pos for pos, v in enumerate(values) if v == top), key=ties)


class RoundRobin(_Policy):
    name = "round_robin"

    @dataclass(frozen=True)
    class Params(CommonParams):
        start: int = 0

    def __init__(self, params: Params) -> None:
        super().__init__()
        self.params = params
        self._next = itertools.count(params.start)  # next() on a count is atomic under the GIL

    def decide(self, live: LiveView, req: RequestMeta) -> DispatchDecision:
        candidates, refusal = self._open(live, req)
        if refusal:
            return refusal
        i = candidates[next(self._next) % len(candidates)]
        return DispatchDecision(live.ids[i], "round_robin")


class LeastLoad(_Policy):
    name = "least_load"
    Params = CommonParams

    def __init__(self, params: CommonParams) -> None:
        super().__init__()
        self.params = params

    def decide(self, live: LiveView, req: RequestMeta) -> DispatchDecision:
        candidates, refusal = self._open(live, req)
        if refusal:
            return refusal
        i = live.least_loaded(candidates)
        return DispatchDecision(live.ids[i], f"least_load: load {live.load(i):.3f}")


class PowerOfTwo(_Policy):
    name = "power_of_two"

    @dataclass(frozen=True)
    class Params(CommonParams):
        seed: int | None = None  # None: seeded from the OS; the simulator passes one

    def __init__(self, params: Params) -> None:
        super().__init__()
        self.params = params
        self._rng = random.Random(params.seed)  # noqa: S311 (tie-breaks, not secrets)

    def decide(self, live: LiveView, req: RequestMeta) -> DispatchDecision:
        candidates, refusal = self._open(live, req)
        if refusal:
            return refusal
        if len(candidates) == 1:
            return DispatchDecision(live.ids[candidates[0]], "power_of_two: only candidate")
        # sample() draws by position only, so indices give the same pairs as the replicas would.
        i = min(self._rng.sample(candidates, 2), key=live.load_key.__getitem__)
        return DispatchDecision(live.ids[i], f"power_of_two: load {live.load(i):.3f}")


class Llumnix(_Policy):
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
        super().__init__()
        self.params = params
        self._memo_key = ("llumnix", params.growth_blocks_per_running, params.headroom_fraction)

    def _reserved_columns(self, live: LiveView) -> tuple[list[int], list[float]]:
        """Per replica: growth blocks of its running requests, and the high-priority headroom."""
        p = self.params
        growth = [r * p.growth_blocks_per_running for r in live.running]
        headroom = [p.headroom_fraction * t for t in live.kv_total]
        return growth, headroom

    def freeness_column(self, live: LiveView, req: RequestMeta) -> list[float]:
        """Every replica's freeness for `req` (see the class docstring), in view order."""
        p = self.params
        growth, headroom = live.cached(self._memo_key, self._reserved_columns)
        normal = req.priority > p.high_priority_max
        cols = (live.kv_free, growth, live.pending, live.busy)
        if live.uniform_block_size is None:
            return self._freeness_mixed_block_sizes(live, req, normal, growth, headroom)
        own = req.blocks_needed(live.uniform_block_size)
        pp = p.pending_blocks if p.pending_blocks is not None else max(1, own)
        if normal:
            # A deficit (v < 0) is not divided by the batch: busier replicas must not look better.
            return [
                v / (b + 1) if (v := f - (g + q * pp + h) - own) >= 0 else v
                for f, g, q, b, h in zip(*cols, headroom, strict=True)
            ]
        return [
            v / (b + 1) if (v := f - (g + q * pp) - own) >= 0 else float(v)
            for f, g, q, b in zip(*cols, strict=True)
        ]

    def _freeness_mixed_block_sizes(
        self,
        live: LiveView,
        req: RequestMeta,
        normal: bool,
        growth: list[int],
        headroom: list[float],
    ) -> list[float]:
        # Replicas with different block sizes: the prompt's own blocks differ per replica.
        p = self.params
        out: list[float] = []
        cols = (live.kv_free, growth, live.pending, live.busy, headroom, live.block_size)
        for f, g, q, b, h, size in zip(*cols, strict=True):
            own = req.blocks_needed(size)
            reserved = g + q * (p.pending_blocks if p.pending_blocks is not None else max(1, own))
            if normal:
                reserved += h
            v = f - reserved - own
            out.append(float(v) if v < 0 else v / (b + 1))
        return out

    def decide(self, live: LiveView, req: RequestMeta) -> DispatchDecision:
        candidates, refusal = self._open(live, req)
        if refusal:
            return refusal
        free = live.column(self.freeness_column(live, req), candidates)
        keys = live.load_key
        pos = _best_of(free, lambda k: keys[candidates[k]])
        return DispatchDecision(live.ids[candidates[pos]], f"llumnix: freeness {free[pos]:.2f}")


class PrefixAffinity(_Policy):
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
        super().__init__()
        self.params = params

    def _best_match(
        self, live: LiveView, candidates: list[int], req: RequestMeta
    ) -> tuple[int, int]:
        """(replica index, leading blocks cached) of the best open match; (-1, 0) for none."""
        hashes = req.prefix_hashes
        if not hashes:
            return -1, 0
        holders = live.prefix_holders(hashes[0])  # without the first block a replica matches 0
        if len(candidates) != live.n:
            open_set = set(candidates)
            holders = tuple(i for i in holders if i in open_set)
        if not holders:
            return -1, 0
        matches = [leading_matches(hashes, live.prefix_hashes[i]) for i in holders]
        keys = live.load_key
        pos = _best_of(matches, lambda k: keys[holders[k]])
        return holders[pos], matches[pos]

    def decide(self, live: LiveView, req: RequestMeta) -> DispatchDecision:
        candidates, refusal = self._open(live, req)
        if refusal:
            return refusal
        idlest = live.least_loaded(candidates)
        best, matched = self._best_match(live, candidates, req)
        if matched < self.params.min_match_blocks:
            return DispatchDecision(live.ids[idlest], f"prefix_affinity: {matched} blocks, idlest")
        excess = live.busy[best] - live.busy[idlest]
        if excess > self.params.balance_abs_threshold:
            return DispatchDecision(
                live.ids[idlest], f"prefix_affinity: best match {excess} requests busier, idlest"
            )
        return DispatchDecision(live.ids[best], f"prefix_affinity: {matched} blocks cached")


class Weighted(_Policy):
    """llm-d style: a weighted sum of named scorers in [0, 1]; the highest total wins."""

    name = "weighted"
    Params = WeightedParams

    def __init__(self, params: WeightedParams) -> None:
        super().__init__()
        self.params = params

    def decide(self, live: LiveView, req: RequestMeta) -> DispatchDecision:
        candidates, refusal = self._open(live, req)
        if refusal:
            return refusal
        totals = weighted_totals(live, candidates, req, self.params.weights)
        ids = live.ids
        pos = _best_of(totals, lambda k: (live.load(candidates[k]), ids[candidates[k]]))
        return DispatchDecision(ids[candidates[pos]], f"weighted: score {totals[pos]:.3f}")


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
