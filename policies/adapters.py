"""Demand-driven LoRA adapter placement across replicas (pure: the controller runs it,
orchestrator/controller/placement.py).

Every replica serves every catalog adapter from its host memory; what placement decides is
which replicas hold an adapter in device memory, where dispatch sends its requests first
(adapter affinity, policies/dispatch.py). Without placement that follows from routing alone:
a hot adapter stays on the one replica that first loaded it until that replica is busier than
the affinity slack allows. Placement spreads it before that happens, and takes it back:

- Demand: replicas report how many requests each adapter has had since they started
  (ReplicaLoad.adapter_requests); AdapterDemand turns the increments into a rate per adapter
  over a sliding window.
- Up, at once: an adapter whose rate exceeds what its holders take (`replica_rps` each) is
  warmed on the least-loaded serving replica that lacks it and has a free device slot, one
  more per round, each after the last has had `settle_s` to show in the load reports.
- Down, with hysteresis: a holder is let go only when the rest would still run below
  `down_ratio` of their share, and no change for this adapter happened in the last `hold_s`
  (so a rate near a threshold does not flap). One holder always stays while there is demand.
- Cold: an adapter without requests for `idle_s` is let go everywhere, freeing its slots.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from policies.cluster_view import ReplicaState, ReplicaView


@dataclass(frozen=True)
class PlacementParams:
    """adapters.placement in the YAML (docs/lora.md)."""

    replica_rps: float = 4.0  # requests/s of one adapter that one holder takes before another
    down_ratio: float = 0.5  # let a holder go when the rest would run below this share
    hold_s: float = 30.0  # no down-step within this long of the adapter's last change
    settle_s: float = 5.0  # no step at all this soon after one: the load reports catch up
    idle_s: float = 300.0  # no requests this long: let it go everywhere
    window_s: float = 30.0  # the demand's sliding window
    max_actions: int = 8  # changes per round, cluster-wide

    def __post_init__(self) -> None:
        if self.replica_rps <= 0:
            raise ValueError(f"replica_rps: must be > 0, got {self.replica_rps}")
        if not 0.0 < self.down_ratio < 1.0:
            raise ValueError(f"down_ratio: must be in (0, 1), got {self.down_ratio}")
        for name in ("hold_s", "settle_s", "idle_s", "window_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        if self.max_actions < 1:
            raise ValueError(f"max_actions: must be >= 1, got {self.max_actions}")


@dataclass(frozen=True)
class Placement:
    """One decision: hold `adapter` in `replica_id`'s device memory, or let it go there."""

    adapter: str
    replica_id: str
    resident: bool
    reason: str


@dataclass
class _Seen:
    counts: dict[str, int]
    incarnation: str


class AdapterDemand:
    """Request rates per adapter from the replicas' cumulative counters."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._seen: dict[str, _Seen] = {}  # replica id -> its last counters
        self._arrivals: dict[str, deque[tuple[float, int]]] = {}  # adapter -> (time, requests)
        self._last: dict[str, float] = {}  # adapter -> when a request of it was last seen
        self._since: float | None = None  # when demand was first observed

    def observe(
        self, replica_id: str, incarnation: str, counts: Mapping[str, int], now: float
    ) -> None:
        """A replica's counters as it reports them; a restarted replica counts from zero."""
        if self._since is None:
            self._since = now
        seen = self._seen.get(replica_id)
        if seen is None or seen.incarnation != incarnation:
            # A replica seen for the first time (or a new process): its past requests are not
            # news, except what a restarted replica has counted since it started.
            base = {} if seen is not None else dict(counts)
            seen = _Seen(base, incarnation)
            self._seen[replica_id] = seen
        for adapter, total in counts.items():
            new = total - seen.counts.get(adapter, 0)
            if new > 0:
                self._arrivals.setdefault(adapter, deque()).append((now, new))
                self._last[adapter] = now
        seen.counts = dict(counts)

    def replica_ids(self) -> list[str]:
        return list(self._seen)

    def forget_replica(self, replica_id: str) -> None:
        self._seen.pop(replica_id, None)

    def rates(self, now: float) -> dict[str, float]:
        """Requests/s per adapter over the window (adapters with none in it are left out)."""
        out = {}
        for adapter, arrivals in list(self._arrivals.items()):
            while arrivals and arrivals[0][0] <= now - self.window_s:
                arrivals.popleft()
            if not arrivals:
                del self._arrivals[adapter]
                continue
            out[adapter] = sum(n for _, n in arrivals) / self.window_s
        return out

    def idle_for(self, adapter: str, now: float) -> float:
        """Seconds since `adapter` last had a request (since observation began if never)."""
        last = self._last.get(adapter, self._since)
        return 0.0 if last is None else now - last


@dataclass
class PlacementState:
    """What placement remembers between rounds: when each adapter last changed."""

    last_change: dict[str, float] = field(default_factory=dict)


def target_holders(rate: float, params: PlacementParams) -> int:
    """Device holders an adapter with `rate` requests/s wants (before the serving bound)."""
    return max(1, math.ceil(rate / params.replica_rps)) if rate > 0 else 0


def plan_placement(
    replicas: Iterable[ReplicaView],
    demand: AdapterDemand,
    catalog: Iterable[str],
    state: PlacementState,
    now: float,
    params: PlacementParams,
) -> list[Placement]:
    """This round's placements (at most params.max_actions); records them in `state`."""
    ready = [r for r in replicas if r.state is ReplicaState.READY]
    rates = demand.rates(now)
    plans: list[Placement] = []
    for adapter in sorted(catalog, key=lambda a: (-rates.get(a, 0.0), a)):
        if len(plans) >= params.max_actions:
            break
        if now - state.last_change.get(adapter, -math.inf) < params.settle_s:
            continue
        serving = [r for r in ready if adapter in r.adapters_loaded]
        holders = [r for r in serving if adapter in r.adapters_resident]
        rate = rates.get(adapter, 0.0)
        step = _one_step(adapter, rate, serving, holders, demand, state, now, params)
        plans += step[: params.max_actions - len(plans)]
    for p in plans:
        state.last_change[p.adapter] = now
    return plans


def _one_step(
    adapter: str,
    rate: float,
    serving: list[ReplicaView],
    holders: list[ReplicaView],
    demand: AdapterDemand,
    state: PlacementState,
    now: float,
    params: PlacementParams,
) -> list[Placement]:
    if rate == 0.0:
        idle = demand.idle_for(adapter, now)
        if idle < params.idle_s:
            return []
        why = f"no requests for {idle:.0f}s (idle_s {params.idle_s:g})"
        return [Placement(adapter, r.replica_id, False, why) for r in holders]
    want = min(target_holders(rate, params), len(serving))
    if len(holders) < want:
        # Only into a free slot: taking one from another adapter placement wants would have
        # the two evict each other round after round (the replica's LRU serves its demand).
        free = [
            r
            for r in serving
            if adapter not in r.adapters_resident and len(r.adapters_resident) < r.adapter_slots
        ]
        if not free:
            return []
        target = min(free, key=_busy)
        why = (
            f"{rate:.2f} req/s over {len(holders)} holder(s) at {params.replica_rps:g} req/s "
            f"each: wants {want}"
        )
        return [Placement(adapter, target.replica_id, True, why)]
    keep = len(holders) - 1
    quiet = now - state.last_change.get(adapter, -math.inf) >= params.hold_s
    if keep >= 1 and quiet and rate < keep * params.replica_rps * params.down_ratio:
        victim = max(holders, key=_busy)
        why = (
            f"{rate:.2f} req/s fits {keep} holder(s) below {params.down_ratio:g} of "
            f"{params.replica_rps:g} req/s each"
        )
        return [Placement(adapter, victim.replica_id, False, why)]
    return []


def _busy(r: ReplicaView) -> tuple[float, str]:
    return (r.load, r.replica_id)
