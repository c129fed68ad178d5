"""What the controller knows: one record per replica, and the frozen ClusterView built from them.

A record holds what the replica last reported (its LoadReport) and what the controller wants of
it (cordoned by an operator, draining for scale-in); the replica's state and its ReplicaView are
derived from those, never stored beside them.

Mutated only on the controller's event-loop thread (gRPC handlers, the reconciler and the admin
API share it), so it needs no lock. The view is rebuilt lazily: many reports between two reads
cost one build.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from actors.common.types import LoadReport
from orchestrator.controller.events import EventKind, EventLog
from policies.cluster_view import ClusterView, ReplicaState, ReplicaView, load_fields


@dataclass
class ReplicaRecord:
    replica_id: str
    expected_since: float  # when the reconciler created or adopted it (monotonic)
    report: LoadReport | None = None  # None until it registers
    last_report: float = 0.0
    reporting: bool = False  # its reports arrive in time
    version: int = 0
    managed: bool = True  # created or adopted by the reconciler (vs. registered on its own)
    # Desired state, set by operators and the reconciler; commands make the replica follow.
    cordoned_by_operator: bool = False
    draining: bool = False  # cordoned; its requests move away by migration (or finish)
    stop_when_empty: bool = False  # scale-in: a draining replica is stopped once empty
    cordon_epoch: int = 0  # bumped whenever the desired cordon flips (part of the command id)
    cordon_applied: tuple[str, int] | None = None  # (incarnation, epoch) the replica confirmed
    drained_seq: int | None = None  # the report seq at which a draining replica was first empty

    @property
    def registered(self) -> bool:
        return self.report is not None

    @property
    def wants_cordon(self) -> bool:
        return self.cordoned_by_operator or self.draining

    @property
    def state(self) -> ReplicaState:
        if self.report is None:
            return ReplicaState.STARTING
        if not self.reporting:
            return ReplicaState.DEAD
        if self.draining:
            done = not self.stop_when_empty and self.report.load.cordoned and self.idle
            return ReplicaState.DRAINED if done else ReplicaState.DRAINING
        # Until the replica confirms a change (or reports it), what it last reported counts too:
        # a cordon wanted or not yet lifted keeps routers away.
        reported = self.report.load.cordoned and not self.cordon_confirmed
        if self.wants_cordon or reported:
            return ReplicaState.CORDONED
        return ReplicaState.READY

    @property
    def cordon_confirmed(self) -> bool:
        """The replica's process confirmed the desired cordon's latest change."""
        ident = self.report.identity if self.report is not None else None
        return ident is not None and self.cordon_applied == (ident.incarnation, self.cordon_epoch)

    @property
    def idle(self) -> bool:
        """Its last report shows no running or waiting request."""
        return self.report is not None and self.report.load.running + self.report.load.waiting == 0


class ControllerState:
    def __init__(
        self,
        unhealthy_after_s: float,
        clock: Callable[[], float] = time.monotonic,
        events: EventLog | None = None,
    ) -> None:
        if unhealthy_after_s <= 0:
            raise ValueError(f"unhealthy_after_s: must be > 0, got {unhealthy_after_s}")
        self.unhealthy_after_s = unhealthy_after_s
        self._clock = clock
        self.events = events if events is not None else EventLog()
        self.records: dict[str, ReplicaRecord] = {}
        self.generation = 0
        self._view: ClusterView | None = None
        self._index: dict[str, int] = {}  # replica id -> position in the cached view
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def touch(self, record: ReplicaRecord | None = None) -> None:
        """Something changed outside the reports (the policy, a record's desired state)."""
        self._changed(only=record)

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

    def register(self, report: LoadReport) -> tuple[bool, str]:
        ident = report.identity
        if not ident.replica_id:
            return False, "replica_id: must be non-empty"
        if not ident.address:
            return False, "address: must be non-empty"
        record = self.records.get(ident.replica_id)
        if record is None:
            # A replica this controller did not start (e.g. it restarted and lost its records).
            record = ReplicaRecord(ident.replica_id, expected_since=self._clock(), managed=False)
            self.records[ident.replica_id] = record
        before = record.report
        if before is None:
            self.events.add(EventKind.REPLICA_JOINED, f"at {ident.address}", ident.replica_id)
        elif before.identity.incarnation != ident.incarnation:
            self.events.add(
                EventKind.REPLICA_RESTARTED,
                f"new process {ident.incarnation} at {ident.address}",
                ident.replica_id,
            )
        self._apply(record, report)
        return True, "registered"

    def report(self, report: LoadReport) -> bool:
        """Apply a load report; False tells the replica to register again."""
        record = self.records.get(report.identity.replica_id)
        if record is None or record.report is None:
            return False
        if report.identity.incarnation != record.report.identity.incarnation:
            return False  # a restarted process: it must re-register with its new address
        if report.seq < record.report.seq:
            return True  # reordered: keep the newer report
        self._apply(record, report)
        return True

    def _apply(self, record: ReplicaRecord, report: LoadReport) -> None:
        if not record.reporting and record.report is not None and record.version:
            self.events.add(EventKind.REPLICA_RECOVERED, "reports again", record.replica_id)
        record.report = report
        record.last_report = self._clock()
        record.reporting = True
        record.version += 1
        self._changed(only=record)

    def forget(self, replica_id: str, why: str = "") -> None:
        if self.records.pop(replica_id, None) is not None:
            if why:
                self.events.add(EventKind.REPLICA_REMOVED, why, replica_id)
            self._changed()

    def mark_stale(self) -> list[str]:
        """Mark replicas whose reports stopped as not reporting; returns the ids that just did."""
        now = self._clock()
        turned = []
        for record in self.records.values():
            if record.reporting and now - record.last_report > self.unhealthy_after_s:
                record.reporting = False
                turned.append(record.replica_id)
                self.events.add(
                    EventKind.REPLICA_UNHEALTHY,
                    f"no load report for {now - record.last_report:.1f}s",
                    record.replica_id,
                )
        if turned:
            self._changed()
        return turned

    # ---- snapshots -------------------------------------------------------------------------

    def view(self) -> ClusterView:
        if self._view is None:
            replicas = tuple(
                _replica_view(r) for r in sorted(self.records.values(), key=_by_id) if r.report
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
    report = record.report
    assert report is not None
    return ReplicaView(
        record.replica_id,
        report.identity.address,
        state=record.state,
        node_id=report.identity.node_id,
        version=record.version,
        **load_fields(report.load),
    )
