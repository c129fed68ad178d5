"""The controller's side of live migration: one request moved on an operator's word, draining
replicas emptied by moving their requests away, and load rebalanced between replicas.

A migration is one `MigrateOut` command to the source replica (actors/migration does the rest);
its id is the migration's id, so a retry after a lost reply is the same migration, never a second
one. The answer comes when the migration has ended, committed or aborted; either way it becomes an
event. Draining replicas (an operator's drain, scale-in) are emptied by the reconciler calling
`evacuate` every tick: each one's requests move, fewest KV blocks first, up to the migration
concurrency at once, to the replicas policies.migration.pick_target chooses. Rebalancing (also
each tick, every migration.rebalance.interval_s) moves the smallest running request of each
replica policies.migration.rebalance_moves finds pressed to the idle one it pairs it with.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from actors.common.commands import MigrateOut, RequestInfo
from actors.common.errors import ErrorKind, ReplicaError
from actors.common.migration import MigrationReport
from orchestrator.controller.commander import ReplicaCommander
from orchestrator.controller.events import EventKind
from orchestrator.controller.settings import ControllerSettings
from orchestrator.controller.state import ControllerState, ReplicaRecord
from orchestrator.metrics.tally import BucketTally
from policies.cluster_view import ReplicaState
from policies.migration import can_take, pick_target, rebalance_moves

logger = logging.getLogger(__name__)

RECENT = 200  # migration reports kept in memory (the admin API and dashboard read them)
RETRY_AFTER_S = 2.0  # a drain round that moved nothing waits this long before the next

# Why a migration started (the metrics' `reason` label; a bounded set).
OPERATOR, DRAIN, REBALANCE = "operator", "drain", "rebalance"
# The request's pause is milliseconds when all goes well; the buckets reach seconds to show when
# it does not. The whole migration (staged copies while decoding goes on) takes longer.
DOWNTIME_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DURATION_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class MigrationRefused(RuntimeError):
    """A migration the controller will not start, and why (`kind`)."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class MigrationRecord:
    """One migration as the controller saw it: how it ended, and between which replicas."""

    report: MigrationReport
    source_replica: str
    target_replica: str


@dataclass
class MigrationTally:
    """Every migration since the controller started, counted (`recent` keeps only the last
    ones): what the Prometheus collector exports as counters and histograms."""

    started: Counter[str] = field(default_factory=Counter)  # by reason
    committed: Counter[str] = field(default_factory=Counter)  # by reason
    aborted: Counter[tuple[str, str]] = field(default_factory=Counter)  # by (reason, cause)
    downtime_s: BucketTally = field(default_factory=lambda: BucketTally(DOWNTIME_BUCKETS_S))
    duration_s: BucketTally = field(default_factory=lambda: BucketTally(DURATION_BUCKETS_S))

    def ended(self, reason: str, report: MigrationReport, cause: str) -> None:
        if report.committed:
            self.committed[reason] += 1
            self.downtime_s.observe(report.downtime_ms / 1e3)
            self.duration_s.observe(report.duration_ms / 1e3)
        else:
            self.aborted[reason, cause] += 1


def abort_cause(report: MigrationReport, error: ReplicaError | None) -> str:
    """A bounded label for why a migration aborted (its reason text is free and unbounded)."""
    if error is not None:  # the controller got no report: the command itself failed
        return error.kind.name.lower()
    if report.reason.startswith("destination:"):  # actors/migration/source.py's prefix
        return "destination"
    if "outgoing migrations" in report.reason:  # the source's concurrency limit
        return "source_busy"
    return "source"


class Migrations:
    def __init__(
        self,
        state: ControllerState,
        commander: ReplicaCommander,
        settings: Callable[[], ControllerSettings],
    ) -> None:
        self._state = state
        self._commander = commander
        self._settings = settings
        self.recent: deque[MigrationRecord] = deque(maxlen=RECENT)
        self.tally = MigrationTally()
        self._evacuations: dict[str, asyncio.Task[None]] = {}
        self._quiet_until: dict[str, float] = {}
        self._shedding: dict[str, asyncio.Task[None]] = {}  # rebalance: one per source
        self._next_round = 0.0

    # ---- one migration ---------------------------------------------------------------------

    async def migrate(self, request_id: str, target_id: str | None = None) -> MigrationRecord:
        """Move a running or waiting request (its OpenAI id) to `target_id` (or the best)."""
        if not self._settings().migration_enabled:
            raise MigrationRefused(
                ErrorKind.CONFLICT, "migration is off (migration.enabled: false)"
            )
        source_id, info = await self._find(request_id)
        if target_id is None:
            target_id = pick_target(self._state.view(), source_id, info.kv_blocks)
            if target_id is None:
                raise MigrationRefused(
                    ErrorKind.UNAVAILABLE, "no other ready replica has room for it"
                )
        target = self._state.records.get(target_id)
        if target is None or target.report is None:
            raise MigrationRefused(ErrorKind.NOT_FOUND, f"no replica {target_id!r}")
        if target_id == source_id:
            raise MigrationRefused(
                ErrorKind.CONFLICT, f"request {request_id!r} already runs on {target_id}"
            )
        if target.state is not ReplicaState.READY:
            raise MigrationRefused(
                ErrorKind.CONFLICT, f"replica {target_id} is {target.state.value}"
            )
        return await self.move(source_id, request_id, target_id, OPERATOR)

    async def move(
        self, source_id: str, request_id: str, target_id: str, reason: str
    ) -> MigrationRecord:
        """Send the MigrateOut and wait for how it ended; never raises for the replicas.
        `reason`: why it moves (OPERATOR, DRAIN, REBALANCE), for the metrics."""
        target = self._state.records[target_id]
        assert target.report is not None
        migration_id = f"mig-{uuid.uuid4().hex[:16]}"
        command = MigrateOut(request_id, target.report.identity.address)
        timeout = self._settings().migration_timeout_s
        self.tally.started[reason] += 1
        result = await self._commander.send(source_id, command, migration_id, timeout_s=timeout)
        report = result.body
        if not isinstance(report, MigrationReport):
            reason = str(result.error) if result.error else "no report"
            report = MigrationReport(migration_id, request_id, "aborted", reason)
        record = MigrationRecord(report, source_id, target_id)
        self.recent.append(record)
        self.tally.ended(reason, report, abort_cause(report, result.error))
        self._state.events.add(
            EventKind.MIGRATION,
            _describe(report, source_id, target_id),
            source_id,
            command_id=migration_id,
            ok=report.committed,
        )
        return record

    async def _find(self, request_id: str) -> tuple[str, RequestInfo]:
        found = await self._commander.find_request(request_id)
        if found is None:
            kind = ErrorKind.NOT_FOUND
            raise MigrationRefused(kind, f"no running or waiting request {request_id!r}")
        return found

    # ---- draining replicas -----------------------------------------------------------------

    def evacuate(self) -> None:
        """(Each reconciler tick) keep one emptying round going per draining replica."""
        if not self._settings().migration_enabled:
            return
        now = time.monotonic()
        for record in list(self._state.records.values()):
            rid = record.replica_id
            if not _evacuating(record) or now < self._quiet_until.get(rid, 0.0):
                continue
            task = self._evacuations.get(rid)
            if task is None or task.done():
                self._evacuations[rid] = asyncio.ensure_future(self._empty(record))

    async def _empty(self, record: ReplicaRecord) -> None:
        source_id = record.replica_id
        listed, _ = await self._commander.list_requests([source_id])
        # Fewest blocks first: the quickest to move frees a slot soonest; n > 1 cannot move.
        infos = sorted((i for _, i in listed if i.n == 1), key=lambda i: i.kv_blocks)
        slots = asyncio.Semaphore(self._settings().migration_concurrency)

        async def one(info: RequestInfo) -> bool:
            async with slots:
                target = pick_target(self._state.view(), source_id, info.kv_blocks)
                if target is None:
                    return False
                moved = await self.move(source_id, info.request_id, target, DRAIN)
                return moved.report.committed

        moved = await asyncio.gather(*(one(i) for i in infos))
        if infos and not all(moved):
            self._quiet_until[source_id] = time.monotonic() + RETRY_AFTER_S

    # ---- rebalancing -----------------------------------------------------------------------

    def rebalance(self) -> None:
        """(Each reconciler tick, every rebalance interval) move one request from each pressed
        replica to an idle one, as policies.migration.rebalance_moves pairs them."""
        settings = self._settings()
        params = settings.rebalance
        now = time.monotonic()
        if params is None or not settings.migration_enabled or now < self._next_round:
            return
        self._next_round = now + settings.rebalance_interval_s
        for source_id, target_id in rebalance_moves(self._state.view(), params):
            task = self._shedding.get(source_id)
            if task is None or task.done():
                self._shedding[source_id] = asyncio.ensure_future(self._shed(source_id, target_id))

    async def _shed(self, source_id: str, target_id: str) -> None:
        listed, _ = await self._commander.list_requests([source_id])
        # The smallest running request of normal priority (a high-priority one moves only when
        # nothing else can): the cheapest move that frees room for the others.
        running = [i for _, i in listed if i.n == 1 and i.state == "running"]
        if not running:
            return
        info = min(running, key=lambda i: (i.priority < 0, i.kv_blocks, i.request_id))
        target = self._state.view().get(target_id)
        if target is not None and can_take(target, info.kv_blocks):
            await self.move(source_id, info.request_id, target_id, REBALANCE)

    async def close(self) -> None:
        tasks = [t for t in (*self._evacuations.values(), *self._shedding.values()) if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _evacuating(record: ReplicaRecord) -> bool:
    report = record.report
    return (
        record.draining
        and report is not None
        and record.reporting
        and report.load.cordoned  # the cordon is in place: nothing new arrives meanwhile
        and not record.idle
    )


def _describe(report: MigrationReport, source_id: str, target_id: str) -> str:
    head = f"{report.request_id} {source_id} -> {target_id}: {report.outcome}"
    if not report.committed:
        return f"{head} ({report.reason})"
    return (
        f"{head} in {report.duration_ms:.0f} ms, {report.stages} stages, "
        f"{report.bytes} bytes, downtime {report.downtime_ms:.1f} ms"
    )
