"""What the controller knows: one record per replica, and the frozen ClusterView built from them.

Mutated only on the controller's event-loop thread (gRPC handlers and the reconciler share it),
so it needs no lock. The view is rebuilt lazily: many reports between two reads cost one build.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

from actors.replica.types import LoadSnapshot
from policies.cluster_view import ClusterView, ReplicaView


@dataclass
class ReplicaRecord:
    replica_id: str
    expected_since: float  # when the reconciler created or adopted it (monotonic)
    load: LoadSnapshot | None = None  # None until it registers
    last_report: float = 0.0
    healthy: bool = False
    inflight: int = 0  # dispatches routed here since its last report
    version: int = 0
    managed: bool = True  # created or adopted by the reconciler (vs. registered on its own)

    @property
    def registered(self) -> bool:
        return self.load is not None


class ControllerState:
    def __init__(
        self, unhealthy_after_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if unhealthy_after_s <= 0:
            raise ValueError(f"unhealthy_after_s: must be > 0, got {unhealthy_after_s}")
        self.unhealthy_after_s = unhealthy_after_s
        self._clock = clock
        self.records: dict[str, ReplicaRecord] = {}
        self.generation = 0
        self._view: ClusterView | None = None
        self._index: dict[str, int] = {}  # replica id -> position in the cached view
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def touch(self) -> None:
        """Something outside the records changed (e.g. the policy): watchers need a new view."""
        self._changed()

    def _changed(self, only: ReplicaRecord | None = None) -> None:
        """Bump the generation; `only`: just that replica changed, patch the cached view."""
        self.generation += 1
        if only is not None and self._view is not None and only.replica_id in self._index:
            self._view = ClusterView(
                replace_at(self._view.replicas, self._index[only.replica_id], _replica_view(only)),
                timestamp=time.time(),
                generation=self.generation,
            )
        else:
            self._view = None
        for listener in self._listeners:
            listener()

    # ---- replica lifecycle -----------------------------------------------------------------

    def expect(self, replica_id: str) -> None:
        """The reconciler created (or found) this replica; it has not registered yet."""
        record = self.records.get(replica_id)
        if record is None:
            self.records[replica_id] = ReplicaRecord(replica_id, expected_since=self._clock())
        else:
            record.managed = True  # it registered before the reconciler listed it

    def register(self, load: LoadSnapshot) -> tuple[bool, str]:
        if not load.replica_id:
            return False, "replica_id: must be non-empty"
        if not load.address:
            return False, "address: must be non-empty"
        record = self.records.get(load.replica_id)
        if record is None:
            # A replica this controller did not start (e.g. it restarted and lost its records).
            record = ReplicaRecord(load.replica_id, expected_since=self._clock(), managed=False)
            self.records[load.replica_id] = record
        self._apply(record, load)
        return True, "registered"

    def report(self, load: LoadSnapshot) -> bool:
        """Apply a load report; False tells the replica to register again."""
        record = self.records.get(load.replica_id)
        if record is None or record.load is None:
            return False
        if load.incarnation != record.load.incarnation:
            return False  # a restarted process: it must re-register with its new address
        if load.seq < record.load.seq:
            return True  # reordered: keep the newer report
        self._apply(record, load)
        return True

    def _apply(self, record: ReplicaRecord, load: LoadSnapshot) -> None:
        record.load = load
        record.last_report = self._clock()
        record.healthy = True
        record.inflight = 0  # the report now reflects what was dispatched before it
        record.version += 1
        self._changed(only=record)

    def forget(self, replica_id: str) -> None:
        if self.records.pop(replica_id, None) is not None:
            self._changed()

    def mark_stale(self) -> list[str]:
        """Mark replicas whose reports stopped unhealthy; returns the ids that just turned."""
        now = self._clock()
        turned = []
        for record in self.records.values():
            if record.healthy and now - record.last_report > self.unhealthy_after_s:
                record.healthy = False
                turned.append(record.replica_id)
        if turned:
            self._changed()
        return turned

    def note_dispatch(self, replica_id: str) -> None:
        record = self.records.get(replica_id)
        if record is None:
            return
        record.inflight += 1
        # Routing-local: patch the cached view, no new generation for watchers.
        if self._view is not None and replica_id in self._index:
            i = self._index[replica_id]
            old = self._view.replicas[i]
            bumped = dataclasses.replace(old, inflight_dispatches=record.inflight)
            self._view = dataclasses.replace(
                self._view, replicas=replace_at(self._view.replicas, i, bumped)
            )

    # ---- snapshots -------------------------------------------------------------------------

    def view(self) -> ClusterView:
        if self._view is None:
            replicas = tuple(
                _replica_view(r) for r in sorted(self.records.values(), key=_by_id) if r.load
            )
            self._view = ClusterView(replicas, timestamp=time.time(), generation=self.generation)
            self._index = {r.replica_id: i for i, r in enumerate(replicas)}
        return self._view

    def silent_for(self, replica_id: str) -> float:
        """Seconds since the replica last reported (or was expected, if it never did)."""
        record = self.records[replica_id]
        since = record.last_report if record.registered else record.expected_since
        return self._clock() - since


def replace_at(items: tuple, index: int, item: object) -> tuple:
    """A copy of `items` with position `index` replaced (O(n) copy, no per-item work)."""
    return items[:index] + (item,) + items[index + 1 :]


def _by_id(record: ReplicaRecord) -> str:
    return record.replica_id


def _replica_view(record: ReplicaRecord) -> ReplicaView:
    load = record.load
    assert load is not None
    return ReplicaView(
        replica_id=record.replica_id,
        address=load.address,
        healthy=record.healthy,
        running=load.running,
        waiting=load.waiting,
        kv_blocks_free=load.kv_blocks_free,
        kv_blocks_total=load.kv_blocks_total,
        block_size=load.block_size,
        tokens_in_flight=load.tokens_in_flight,
        step_time_ms=load.step_time_ms,
        adapters_resident=frozenset(load.adapters_resident),
        prefix_hashes=frozenset(load.prefix_hashes),
        max_running=load.max_running,
        inflight_dispatches=record.inflight,
        node_id=load.node_id,
        version=record.version,
    )
