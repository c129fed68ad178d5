"""The control loop: compare the desired replica count with what replicas report, and converge.

RPC handlers only record state; this loop is the one place that issues commands (create, kill).
Each tick is independent: an exception is logged and the next tick tries again.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Protocol

from orchestrator.controller.settings import ControllerSettings
from orchestrator.controller.state import ControllerState

logger = logging.getLogger(__name__)


class ReplicaBackend(Protocol):
    def create_replica(
        self, replica_id: str, settings: ControllerSettings, controller_address: str
    ) -> None: ...

    def list_replicas(self) -> list[str]: ...

    def is_alive(self, replica_id: str) -> bool: ...

    def kill_replica(self, replica_id: str) -> None: ...


class Reconciler:
    def __init__(
        self,
        state: ControllerState,
        backend: ReplicaBackend,
        settings: Callable[[], ControllerSettings],
        controller_address: str,
    ) -> None:
        self._state = state
        self._backend = backend
        self._settings = settings
        self._address = controller_address
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
        for replica_id in self._state.mark_stale():
            logger.warning("replica %s missed its load reports: marked unhealthy", replica_id)
        await self._reap_dead()
        await self._converge()

    async def _blocking(self, fn: Callable, *args: object) -> object:
        # Ray calls block; keep them off the event loop that serves gRPC.
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def _adopt_existing(self) -> None:
        """After a restart: replicas that survived are expected, not recreated."""
        existing = await self._blocking(self._backend.list_replicas)
        for replica_id in existing:
            self._state.expect(replica_id)
        if existing:
            logger.info("adopted %d running replicas: %s", len(existing), sorted(existing))
        self._adopted = True

    async def _reap_dead(self) -> None:
        settings = self._settings()
        for record in list(self._state.records.values()):
            if record.healthy:
                continue
            silent = self._state.silent_for(record.replica_id)
            if silent < settings.dead_after_s:
                continue
            alive = await self._blocking(self._backend.is_alive, record.replica_id)
            if alive and (record.registered or silent < settings.start_timeout_s):
                continue  # starting, or alive but not reporting (a partition): leave it be
            if not record.registered:
                self._note_start_failure()
            logger.warning(
                "replica %s is gone (silent %.1fs): replacing it", record.replica_id, silent
            )
            self._state.forget(record.replica_id)
            await self._blocking(self._backend.kill_replica, record.replica_id)

    def _note_start_failure(self) -> None:
        # A replica that dies while starting (bad model path, OOM) would die again at once:
        # back off exponentially instead of creating one every tick.
        self.start_failures += 1
        delay = min(self.max_backoff_s, 2.0 ** min(self.start_failures, 16))
        self._create_after = time.monotonic() + delay
        logger.warning(
            "replica failed to start (%d in a row); next try in %.0fs", self.start_failures, delay
        )

    async def _converge(self) -> None:
        desired = self._settings().replicas
        managed = [r for r in self._state.records.values() if r.managed]
        if any(r.registered for r in managed):
            self.start_failures = 0  # replicas can start: the backoff is over
        missing = desired - len(managed)
        if missing > 0 and time.monotonic() < self._create_after:
            return
        for _ in range(missing):
            replica_id = uuid.uuid4().hex[:8]
            self._state.expect(replica_id)
            logger.info("creating replica %s (%d desired)", replica_id, desired)
            try:
                await self._blocking(
                    self._backend.create_replica, replica_id, self._settings(), self._address
                )
            except Exception:
                self._state.forget(replica_id)  # not created: the next tick tries again
                raise
        if missing < 0:
            await self._scale_down(-missing, managed)

    async def _scale_down(self, count: int, managed: list) -> None:
        # Unhealthy or not-yet-registered first, then the least busy.
        ranked = sorted(
            managed,
            key=lambda r: (r.healthy, (r.load.running + r.load.waiting) if r.load else 0),
        )
        for record in ranked[:count]:
            logger.info("scaling down: removing replica %s", record.replica_id)
            self._state.forget(record.replica_id)
            await self._blocking(self._backend.kill_replica, record.replica_id)
