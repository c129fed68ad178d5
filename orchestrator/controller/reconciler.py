"""The control loop: compare what is desired with what replicas report, and converge.

Desired state is recorded elsewhere (the replica count in the deployment config; a record's
cordon and drain flags, set by the admin API and by scale-in); this loop is the one place that
acts on it: it creates and stops replicas (through the backend) and makes each replica's cordon
follow the desired one (through the commander). Each tick is independent: an exception is
logged and the next tick tries again.

Scale-in never loses a request: the replicas to remove are cordoned (routers stop sending them
requests; one that still arrives is refused and the ingress routes it elsewhere), their requests
move to other replicas by live migration (those that cannot move finish where they are), and each
is stopped only once two consecutive load reports show it empty.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Protocol

from actors.common.commands import CommandResult, Cordon, Uncordon
from orchestrator.controller.commander import ReplicaCommander
from orchestrator.controller.events import EventKind
from orchestrator.controller.migrations import Migrations
from orchestrator.controller.placement import AdapterPlacer
from orchestrator.controller.settings import ControllerSettings
from orchestrator.controller.state import ControllerState, ReplicaRecord

logger = logging.getLogger(__name__)

# Replicas started in one tick, at most: a tick then stays short, so a change of the desired
# count (an operator's scale after a typo such as 10000) and a shutdown take effect at the next
# tick, not after thousands of actor creations. At one tick a second this is still 16 replicas a
# second, faster than replicas load their models.
MAX_CREATES_PER_TICK = 16


class ReplicaBackend(Protocol):
    def create_replica(
        self, replica_id: str, settings: ControllerSettings, controller_address: str
    ) -> None: ...

    def list_replicas(self) -> list[str]: ...

    def is_alive(self, replica_id: str) -> bool: ...

    def stop_replica(self, replica_id: str) -> None:
        """Shut a replica down cleanly (it has no requests left), then remove its actor."""

    def kill_replica(self, replica_id: str) -> None: ...

    def start_error(self, replica_id: str) -> str | None:
        """Why a replica's constructor failed (one line), if it did."""


def cordon_command_id(record: ReplicaRecord) -> str:
    """The id of the command that makes `record`'s replica follow its desired cordon: the same
    for every retry of one change, new for the next change or a restarted process."""
    assert record.report is not None
    verb = "cordon" if record.wants_cordon else "uncordon"
    incarnation = record.report.identity.incarnation
    return f"{verb}-{record.replica_id}-{incarnation}-{record.cordon_epoch}"


def cordon_settled(record: ReplicaRecord) -> bool:
    """The replica already follows the desired cordon (confirmed or reported)."""
    assert record.report is not None
    return record.cordon_confirmed or record.report.load.cordoned == record.wants_cordon


async def apply_cordon(commander: ReplicaCommander, record: ReplicaRecord) -> CommandResult:
    """Send the command that makes the replica follow its desired cordon."""
    assert record.report is not None
    epoch, incarnation = record.cordon_epoch, record.report.identity.incarnation
    command = Cordon() if record.wants_cordon else Uncordon()
    result = await commander.send(record.replica_id, command, cordon_command_id(record))
    if result.ok and record.cordon_epoch == epoch:
        record.cordon_applied = (incarnation, epoch)
    return result


def set_drain(
    state: ControllerState, record: ReplicaRecord, on: bool, stop_when_empty: bool = False
) -> None:
    """Start (or call off) emptying a replica: it is cordoned, and its requests move away by
    migration (or finish where they are); `stop_when_empty` (scale-in) then stops it."""
    was_cordoned = record.wants_cordon
    record.draining, record.stop_when_empty = on, on and stop_when_empty
    record.drained_seq = None
    if record.wants_cordon != was_cordoned:
        record.cordon_epoch += 1
    if not on:
        kind, why = EventKind.REPLICA_UNDRAINED, "takes requests again"
    elif stop_when_empty:
        kind, why = EventKind.REPLICA_DRAINING, "scale-in: emptied, then stopped"
    else:
        kind, why = EventKind.REPLICA_DRAINING, "drain: no new requests, running ones move away"
    state.events.add(kind, why, record.replica_id)
    state.touch(record)


class Reconciler:
    def __init__(
        self,
        state: ControllerState,
        backend: ReplicaBackend,
        commander: ReplicaCommander,
        migrations: Migrations,
        settings: Callable[[], ControllerSettings],
        desired_replicas: Callable[[], int],
        controller_address: str,
        placer: AdapterPlacer | None = None,
    ) -> None:
        self._state = state
        self._backend = backend
        self._commander = commander
        self._migrations = migrations
        self._settings = settings
        self._desired = desired_replicas
        self._address = controller_address
        self._placer = placer
        self._adopted = False
        self.start_failures = 0
        self._create_after = 0.0
        self.max_backoff_s = 60.0
        self.ticks = 0
        self.failed_ticks = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until `stop` is set; never lets an exception end the loop."""
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:
                self.failed_ticks += 1
                logger.exception("reconciler tick failed; continuing")
            try:
                # Paces the loop; wakes at once on stop.
                await asyncio.wait_for(stop.wait(), self._settings().reconcile_interval_s)
            except asyncio.TimeoutError:
                pass

    async def tick(self) -> None:
        self.ticks += 1
        if not self._adopted:
            await self._adopt_existing()
        self._state.mark_stale()
        await self._reap_dead()
        await self._converge_count()
        await self._converge_cordons()
        self._migrations.evacuate()  # draining replicas: their requests move away
        self._migrations.rebalance()  # pressed replicas shed a request to idle ones
        if self._placer is not None:
            self._placer.round()  # adapters onto (off) devices as their demand asks
        await self._finish_drains()

    async def _blocking(self, fn: Callable, *args: object) -> object:
        # Ray calls block; keep them off the event loop that serves gRPC and the admin API.
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def _adopt_existing(self) -> None:
        """After a restart: replicas that survived are expected, not recreated."""
        existing = await self._blocking(self._backend.list_replicas)
        for replica_id in existing:
            self._state.expect(replica_id)
        if existing:
            logger.info("adopted %d running replicas: %s", len(existing), sorted(existing))
        self._adopted = True

    # ---- dead replicas ---------------------------------------------------------------------

    async def _reap_dead(self) -> None:
        settings = self._settings()
        for record in list(self._state.records.values()):
            if record.reporting:
                continue
            silent = self._state.silent_for(record.replica_id)
            if silent < settings.dead_after_s:
                continue
            alive = await self._blocking(self._backend.is_alive, record.replica_id)
            if alive and (record.registered or silent < settings.start_timeout_s):
                continue  # starting, or alive but not reporting (a partition): leave it be
            if not record.registered:
                cause = await self._blocking(self._backend.start_error, record.replica_id)
                self._note_start_failure(record.replica_id, cause)
            await self._remove(record, f"gone (silent {silent:.1f}s): replacing it", kill=True)

    def _note_start_failure(self, replica_id: str, cause: str | None = None) -> None:
        # A replica that dies while starting (bad model path, OOM) would die again at once:
        # back off exponentially instead of creating one every tick.
        self.start_failures += 1
        delay = min(self.max_backoff_s, 2.0 ** min(self.start_failures, 16))
        self._create_after = time.monotonic() + delay
        why = f": {cause}" if cause else ""
        self._state.events.add(
            EventKind.REPLICA_START_FAILED,
            f"died while starting{why} ({self.start_failures} in a row); next try in {delay:.0f}s",
            replica_id,
        )

    async def _remove(self, record: ReplicaRecord, why: str, *, kill: bool) -> None:
        self._state.forget(record.replica_id, why)
        if record.report is not None:
            await self._commander.forget(record.report.identity.address)
        stop = self._backend.kill_replica if kill else self._backend.stop_replica
        await self._blocking(stop, record.replica_id)

    # ---- the replica count -----------------------------------------------------------------

    async def _converge_count(self) -> None:
        desired = self._desired()
        managed = [r for r in self._state.records.values() if r.managed]
        if any(r.registered for r in managed):
            self.start_failures = 0  # replicas can start: the backoff is over
        active = [r for r in managed if not r.stop_when_empty]
        missing = desired - len(active)
        if missing > 0:
            missing -= self._undrain(managed, missing)
        if missing > 0 and time.monotonic() >= self._create_after:
            await self._create(min(missing, MAX_CREATES_PER_TICK), desired)
        if missing < 0:
            await self._scale_in(-missing, active)

    def _undrain(self, managed: list[ReplicaRecord], wanted: int) -> int:
        """Scaling out again: keep replicas that are still draining rather than start new ones."""
        kept = 0
        for record in managed:
            if kept == wanted:
                break
            if record.stop_when_empty and record.reporting:
                set_drain(self._state, record, False)
                kept += 1
        return kept

    async def _create(self, count: int, desired: int) -> None:
        for _ in range(count):
            replica_id = uuid.uuid4().hex[:8]
            self._state.expect(replica_id)
            self._state.events.add(
                EventKind.REPLICA_CREATED, f"starting ({desired} desired)", replica_id
            )
            try:
                await self._blocking(
                    self._backend.create_replica, replica_id, self._settings(), self._address
                )
            except Exception:
                self._state.forget(replica_id)  # not created: the next tick tries again
                raise

    async def _scale_in(self, count: int, active: list[ReplicaRecord]) -> None:
        # Not yet serving first (nothing to lose), then those an operator cordoned (already out
        # of service), then the least busy.
        def cost(r: ReplicaRecord) -> tuple[bool, bool, int]:
            serving = r.registered and r.reporting
            load = r.report.load.running + r.report.load.waiting if r.report else 0
            return serving, not r.cordoned_by_operator, load

        for record in sorted(active, key=cost)[:count]:
            if record.registered and record.reporting:
                set_drain(self._state, record, True, stop_when_empty=True)
            else:
                await self._remove(record, "scale-in (was not serving yet)", kill=True)

    # ---- cordons ---------------------------------------------------------------------------

    async def _converge_cordons(self) -> None:
        pending = [
            r
            for r in self._state.records.values()
            if r.report is not None and r.reporting and not cordon_settled(r)
        ]
        if pending:
            await asyncio.gather(*(apply_cordon(self._commander, r) for r in pending))

    # ---- drains ----------------------------------------------------------------------------

    async def _finish_drains(self) -> None:
        for record in list(self._state.records.values()):
            if not record.stop_when_empty or record.report is None or not record.reporting:
                continue
            report = record.report
            if not (report.load.cordoned and record.idle):
                record.drained_seq = None
                continue
            if record.drained_seq is None:
                record.drained_seq = report.seq  # empty once: wait for a later report
                continue
            if report.seq > record.drained_seq:
                await self._remove(record, "scale-in: drained, stopped", kill=False)
