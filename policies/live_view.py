"""LiveView: a ClusterView laid out as per-replica columns, plus one router's own dispatches.

A dispatch decision looks at every replica, so at 100 replicas its cost is per-replica Python
work: attribute reads, property calls, a key tuple per replica. A LiveView computes what depends
only on the frozen view once, when the view arrives, and keeps what in-flight dispatches change
(pending, busy, the least-load keys, the open candidates) up to date one replica at a time, so a
decision is a few C-level passes over lists plus the arithmetic that depends on the request.

A LiveView is mutable and belongs to one router; a new ClusterView gets a new LiveView. Its
`memo` holds per-view data that in-flight counts and health cannot change (policy constants,
which replicas cache a prefix block): it lives and dies with the LiveView.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from operator import attrgetter
from typing import Any, TypeVar

from policies.cluster_view import ClusterView, ReplicaState, ReplicaView

T = TypeVar("T")

# Prefix lookups a view answers by scanning every replica before it builds an index of all cached
# block hashes: the index costs about this many scans to build (100 replicas x 32 hashes).
_SCANS_BEFORE_INDEX = 128

_ROW = attrgetter(
    "replica_id",
    "healthy",
    "running",
    "waiting",
    "inflight_dispatches",
    "max_running",
    "kv_blocks_free",
    "kv_blocks_total",
    "block_size",
    "prefix_hashes",
    "adapters_resident",
)


class LiveView:
    """Columns of one ClusterView (index i is `view.replicas[i]`) with mutable in-flight counts."""

    __slots__ = (
        "view",
        "replicas",
        "n",
        "ids",
        "index",
        "healthy",
        "running",
        "waiting",
        "inflight",
        "pending",
        "busy",
        "max_running",
        "spare",
        "kv_free",
        "kv_total",
        "kv_free_fraction",
        "block_size",
        "uniform_block_size",
        "prefix_hashes",
        "adapters",
        "load_key",
        "memo",
        "version",
        "_prefix_memo",
        "_prefix_index",
        "_neg_free",
        "_load_den",
        "_open",
        "_open_max_queue",
    )

    def __init__(self, view: ClusterView) -> None:
        reps = view.replicas
        self.view = view
        self.replicas = reps
        self.n = len(reps)
        cols: list[Any] = [list(c) for c in zip(*map(_ROW, reps), strict=True)] or [
            [] for _ in range(11)
        ]
        (ids, healthy, running, waiting, inflight, max_running, free, total, bs, prefix, ads) = cols
        self.ids: list[str] = ids
        self.index: dict[str, int] = {rid: i for i, rid in enumerate(ids)}
        self.healthy: list[bool] = healthy
        self.running: list[int] = running
        self.waiting: list[int] = waiting
        self.inflight: list[int] = inflight
        self.pending: list[int] = [w + f for w, f in zip(waiting, inflight, strict=True)]
        self.busy: list[int] = [r + p for r, p in zip(running, self.pending, strict=True)]
        self.max_running: list[int] = max_running
        # Free running slots: pending requests up to this many are not queued.
        self.spare: list[int] = [
            m - r if m > r else 0 for m, r in zip(max_running, running, strict=True)
        ]
        self.kv_free: list[int] = free
        self.kv_total: list[int] = total
        # ReplicaView.kv_free_fraction (floored free), and the unfloored share least_load ranks by.
        self.kv_free_fraction: list[float] = [
            (f if f > 0 else 0) / t if t > 0 else 0.0 for f, t in zip(free, total, strict=True)
        ]
        self._neg_free: list[float] = [
            -(f / t if t > 0 else 0.0) for f, t in zip(free, total, strict=True)
        ]
        self._load_den: list[int] = [m or 1 for m in max_running]
        self.block_size: list[int] = bs
        self.uniform_block_size: int | None = bs[0] if bs and bs.count(bs[0]) == len(bs) else None
        self.prefix_hashes: list[frozenset[str]] = prefix
        self.adapters: list[frozenset[str]] = ads
        # least_load's ranking: lower load, then more free KV, then the id (deterministic ties).
        self.load_key: list[tuple[float, float, str]] = [
            (b / d, nf, rid)
            for b, d, nf, rid in zip(self.busy, self._load_den, self._neg_free, ids, strict=True)
        ]
        self.memo: dict[Any, Any] = {}
        self._prefix_memo: dict[str, list[int]] = {}
        self._prefix_index: dict[str, list[int]] | None = None
        self.version = 0  # bumped by every change to in-flight counts or health
        self._open: list[int] | None = None
        self._open_max_queue = 0

    _COLUMNS = (
        "ids",
        "healthy",
        "running",
        "waiting",
        "inflight",
        "max_running",
        "kv_free",
        "kv_total",
        "block_size",
        "prefix_hashes",
        "adapters",
        "pending",
        "busy",
        "spare",
        "kv_free_fraction",
        "_neg_free",
        "_load_den",
        "load_key",
    )

    def follow(self, view: ClusterView) -> LiveView:
        """The LiveView of `view`, built from these columns when only a few replicas changed.

        The controller patches its view one replica per report or dispatch (the other
        ReplicaView objects are the same), so re-reading every replica would be wasted work.
        Only an unchanged LiveView (no in-flight counts or health set on it) can be followed.
        """
        reps = view.replicas
        if self.version or len(reps) != self.n:
            return LiveView(view)
        changed = [
            i for i, (a, b) in enumerate(zip(self.replicas, reps, strict=True)) if a is not b
        ]
        if len(changed) * 4 > self.n:
            return LiveView(view)
        live = LiveView.__new__(LiveView)
        for name in self._COLUMNS:
            setattr(live, name, getattr(self, name).copy())
        live.view, live.replicas, live.n = view, reps, self.n
        live.memo, live._prefix_memo, live._prefix_index = {}, {}, None
        live.version, live._open, live._open_max_queue = 0, None, 0
        new_ids = any(live.ids[i] != reps[i].replica_id for i in changed)
        for i in changed:
            live._set_row(i, reps[i])
        live.index = {rid: i for i, rid in enumerate(live.ids)} if new_ids else self.index
        bs = live.block_size
        live.uniform_block_size = bs[0] if bs and bs.count(bs[0]) == len(bs) else None
        return live

    def _set_row(self, i: int, r: ReplicaView) -> None:
        """Column entries of replica `i` from `r`, derived exactly as __init__ derives them."""
        (rid, healthy, running, waiting, inflight, max_running, free, total, bs, prefix, ads) = (
            _ROW(r)
        )
        self.ids[i], self.healthy[i], self.running[i], self.waiting[i] = (
            rid,
            healthy,
            running,
            waiting,
        )
        self.inflight[i], self.max_running[i], self.kv_free[i] = inflight, max_running, free
        self.kv_total[i], self.block_size[i], self.prefix_hashes[i], self.adapters[i] = (
            total,
            bs,
            prefix,
            ads,
        )
        pending = waiting + inflight
        busy = running + pending
        self.pending[i], self.busy[i] = pending, busy
        self.spare[i] = max_running - running if max_running > running else 0
        self.kv_free_fraction[i] = (free if free > 0 else 0) / total if total > 0 else 0.0
        neg_free = -(free / total if total > 0 else 0.0)
        den = max_running or 1
        self._neg_free[i], self._load_den[i] = neg_free, den
        self.load_key[i] = (busy / den, neg_free, rid)

    # ---- changes ---------------------------------------------------------------------------

    def add_inflight(self, i: int, delta: int) -> None:
        """Replica `i` has `delta` more in-flight dispatches (floored at 0, as in ClusterView)."""
        old = self.inflight[i]
        new = old + delta
        if new < 0:
            new = 0
        if new == old:
            return
        d = new - old
        self.inflight[i] = new
        pending = self.pending[i]
        self.pending[i] = pending + d
        busy = self.busy[i] + d
        self.busy[i] = busy
        self.load_key[i] = (busy / self._load_den[i], self._neg_free[i], self.ids[i])
        if self._open is not None and self.healthy[i]:
            # The cached candidates change only when this replica's queue fills up or drains.
            room = self._open_max_queue + self.spare[i]
            if (pending < room) != (pending + d < room):
                self._open = None
        self.version += 1

    def set_healthy(self, i: int, healthy: bool) -> None:
        if self.healthy[i] != healthy:
            self.healthy[i] = healthy
            self._open = None
            self.version += 1

    # ---- reads -----------------------------------------------------------------------------

    def _is_open(self, i: int, max_queue: int) -> bool:
        # ReplicaView.is_full inverted: the pending requests free running slots cannot absorb.
        return self.healthy[i] and self.pending[i] - self.spare[i] < max_queue

    def open_indices(self, max_queue: int) -> list[int]:
        """Indices of healthy replicas with room in their queue, in view order (cached)."""
        if self._open is None or self._open_max_queue != max_queue:
            self._open = [
                i
                for i, (h, p, s) in enumerate(
                    zip(self.healthy, self.pending, self.spare, strict=True)
                )
                if h and p - s < max_queue
            ]
            self._open_max_queue = max_queue
        return self._open

    def any_healthy(self) -> bool:
        return True in self.healthy

    def least_loaded(self, candidates: Sequence[int]) -> int:
        """The candidate with the lowest load key (first one on equal keys)."""
        keys = self.load_key
        if len(candidates) == self.n:
            return keys.index(min(keys))
        return min(candidates, key=keys.__getitem__)

    def load(self, i: int) -> float:
        """ReplicaView.load of replica `i` with this router's dispatches."""
        m = self.max_running[i]
        return self.busy[i] / (m if m > 1 else 1)

    def column(self, values: list[T], candidates: Sequence[int]) -> list[T]:
        """`values` restricted to `candidates` (the column itself when every replica is one)."""
        if len(candidates) == self.n:
            return values
        return [values[i] for i in candidates]

    def cached(self, key: Any, build: Callable[[LiveView], T]) -> T:
        """Per-view data that in-flight counts and health do not change, built on first use."""
        try:
            return self.memo[key]
        except KeyError:
            value = self.memo[key] = build(self)
            return value

    def prefix_holders(self, block_hash: str) -> Sequence[int]:
        """Indices of the replicas whose cache summary holds `block_hash`, in view order.

        The first lookups scan the replicas (memoized per hash); once a view has served
        `_SCANS_BEFORE_INDEX` of them, an index of every cached hash is cheaper than scanning.
        """
        index = self._prefix_index
        if index is not None:
            return index.get(block_hash, ())
        memo = self._prefix_memo
        holders = memo.get(block_hash)
        if holders is None:
            if len(memo) >= _SCANS_BEFORE_INDEX:
                self._prefix_index = index = self._build_prefix_index()
                return index.get(block_hash, ())
            holders = memo[block_hash] = [
                i for i, cached in enumerate(self.prefix_hashes) if block_hash in cached
            ]
        return holders

    def _build_prefix_index(self) -> dict[str, list[int]]:
        index: dict[str, list[int]] = {}
        for i, cached in enumerate(self.prefix_hashes):
            for block_hash in cached:
                index.setdefault(block_hash, []).append(i)
        return index

    def to_view(self) -> ClusterView:
        """The ClusterView these columns describe, in-flight counts and health included."""
        replicas = tuple(
            r
            if r.inflight_dispatches == f and r.healthy == h
            else replace(r, inflight_dispatches=f, state=_state(r, h))
            for r, f, h in zip(self.replicas, self.inflight, self.healthy, strict=True)
        )
        return replace(self.view, replicas=replicas)

    def replica(self, i: int) -> ReplicaView:
        """Replica `i` as reported (address, adapters...): without this router's dispatches."""
        return self.replicas[i]


def _state(r: ReplicaView, healthy: bool) -> ReplicaState:
    """`r`'s state, or the one a router that stopped (or resumed) routing to it implies."""
    if r.healthy == healthy:
        return r.state
    return ReplicaState.READY if healthy else ReplicaState.DEAD
