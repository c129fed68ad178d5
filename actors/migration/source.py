"""The source's side of a migration (the MigrateOut command): multi-stage copy, pause, commit.

    1. reserve on the destination (PrepareMigrateIn) the blocks the request holds now, plus one;
    2. stages, while the request keeps decoding here: copy the blocks that are full and not yet
       sent; stop when what is left would fit the downtime budget at the transfer rate measured
       so far, when nothing new is full, or after max_stages copies;
    3. pause the request (it is neither scheduled nor preempted now), copy the blocks left
       (the last one partial) and commit its whole state (CommitMigrateIn): the destination
       runs it from the next token on;
    4. release it here and tell its connection where it went (a `migrated_to` delta after every
       delta it produced here), so the ingress follows it with no gap and no repeat.

Every failure leaves exactly one owner: before the commit answers, the request stays (or resumes)
here and the destination's reservation is aborted; after it, the request lives there. A request
that ends while it moves (finished, or aborted by its client) ends the migration cleanly. The
blocks a stage sent must still be the request's first blocks at the pause (a preemption frees
them): otherwise the migration aborts. Every source -> destination command carries the migration
id, so a retried commit is never applied twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from actors.common.commands import (
    Abort,
    AbortMigrateIn,
    CommitMigrateIn,
    PrepareMigrateIn,
)
from actors.common.config import MigrationSettings
from actors.common.errors import ErrorKind
from actors.common.migration import MigrationReport
from actors.migration.transport import SendCommand, Transport
from actors.replica.loop import EngineLoop

logger = logging.getLogger(__name__)

T = TypeVar("T")


class MigrationAborted(Exception):
    """Why a migration stopped before its commit (the request stays on the source)."""


class MigrationSource:
    """One replica's outgoing migrations (several may run at once, up to max_concurrent)."""

    def __init__(self, engine_loop: EngineLoop, settings: MigrationSettings) -> None:
        self._loop = engine_loop
        self._settings = settings
        self.active = 0

    async def on_engine(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the engine thread (between two steps) and await its result."""
        return await asyncio.wrap_future(self._loop.call(fn))

    async def migrate(
        self,
        migration_id: str,
        request_id: str,
        target_address: str,
        send: SendCommand,
        transports: list[Transport],
        max_stages: int | None = None,
    ) -> MigrationReport:
        """Move `request_id` to the replica at `target_address`; never raises. `transports` in
        order of preference: a destination that cannot use one (cuda_ipc from another node)
        refuses it at the reservation, and the next is tried."""
        run = _Run(migration_id, request_id, target_address)
        run.max_stages = self._settings.max_stages if max_stages is None else max_stages
        if self.active >= self._settings.max_concurrent:
            return run.aborted(f"this replica already runs {self.active} outgoing migrations")
        self.active += 1
        self._loop.migrating_out += 1
        try:
            return await self._migrate(run, send, transports)
        finally:
            self.active -= 1
            self._loop.migrating_out -= 1
            self._loop.migrated_bytes += run.bytes

    async def _migrate(
        self, run: _Run, send: SendCommand, transports: list[Transport]
    ) -> MigrationReport:
        mid, rid = run.migration_id, run.request_id
        engine = self._loop.engine
        bs = engine.config.cache.block_size
        try:
            (blocks, _), adapter = await self.on_engine(
                lambda: (engine.migration_blocks(rid), engine.adapter_of(rid))
            )
        except ValueError as exc:
            return run.aborted(str(exc))
        error = None
        for transport in transports:
            prepare = PrepareMigrateIn(
                mid, rid, len(blocks) + 1, transport.name, transport.source_handle(), adapter or ""
            )
            error = (await send(prepare, f"{mid}:prepare:{transport.name}")).error
            if error is None or error.kind is not ErrorKind.INVALID_ARGUMENT:
                break  # reserved, or refused for a reason another transport does not change
        if error is not None:
            return run.aborted(f"destination: {error}")
        run.transport = transport.name
        paused = False
        try:
            await self._stages(run, transport, bs)
            blocks, state = await self.on_engine(lambda: self._loop.pause_for_migration(rid))
            paused = True
            run.paused_at = time.perf_counter()
            if blocks[: len(run.sent)] != run.sent:
                raise MigrationAborted("its blocks were freed meanwhile (preempted)")
            if len(blocks) > len(run.sent):
                run.bytes += await transport.send(mid, len(run.sent), blocks[len(run.sent) :])
            run.blocks = len(blocks)
            commit = await send(CommitMigrateIn(mid, state, len(blocks)), f"{mid}:commit")
            if commit.error is not None:
                raise MigrationAborted(f"destination did not commit: {commit.error}")
        except Exception as exc:  # MigrationAborted, a transport error, the request ended...
            if paused:
                await self.on_engine(lambda: engine.resume_request(rid))
            await send(AbortMigrateIn(mid), f"{mid}:abort")
            logger.info("migration %s of %s aborted: %s", mid, rid, exc)
            return run.aborted(str(exc))
        # Committed: the request runs there now. Here it is released, and its stream told.
        moved = await self.on_engine(
            lambda: self._loop.finish_migration_out(rid, run.target_address)
        )
        if not moved:  # its client left between the pause and the commit: end it there too
            await send(Abort(rid), f"{mid}:client-left")
        return run.committed()

    async def _stages(self, run: _Run, transport: Transport, block_size: int) -> None:
        """Copy full blocks while the request decodes, until what is left fits the budget."""
        engine = self._loop.engine
        budget_s = self._settings.downtime_budget_ms / 1e3
        block_bytes = engine.runner.kv_block_bytes
        rate: float | None = None  # bytes per second, measured by the stages themselves
        while run.stages < run.max_stages:
            blocks, computed = await self.on_engine(lambda: engine.migration_blocks(run.request_id))
            if blocks[: len(run.sent)] != run.sent:
                raise MigrationAborted("its blocks were freed meanwhile (preempted)")
            left = len(blocks) - len(run.sent)
            if rate is not None and left * block_bytes / rate <= budget_s:
                return
            full = computed // block_size
            if full <= len(run.sent):
                return  # nothing new is full: only the partial tail is left
            t0 = time.perf_counter()
            run.bytes += await transport.send(
                run.migration_id, len(run.sent), blocks[len(run.sent) : full]
            )
            rate = (full - len(run.sent)) * block_bytes / max(time.perf_counter() - t0, 1e-6)
            run.sent = blocks[:full]
            run.stages += 1


class _Run:
    """What one migration did so far (for its report)."""

    def __init__(self, migration_id: str, request_id: str, target_address: str) -> None:
        self.migration_id = migration_id
        self.request_id = request_id
        self.target_address = target_address
        self.started = time.perf_counter()
        self.sent: list[int] = []  # source block ids the stages copied, in order
        self.stages = 0
        self.blocks = 0
        self.bytes = 0
        self.paused_at: float | None = None
        self.transport = ""
        self.max_stages = 0

    def _report(self, outcome: str, reason: str = "", **kw: Any) -> MigrationReport:
        now = time.perf_counter()
        return MigrationReport(
            migration_id=self.migration_id,
            request_id=self.request_id,
            outcome=outcome,
            reason=reason,
            stages=self.stages,
            blocks=self.blocks,
            bytes=self.bytes,
            duration_ms=(now - self.started) * 1e3,
            target=self.target_address,
            **kw,
        )

    def committed(self) -> MigrationReport:
        assert self.paused_at is not None
        return self._report("committed", downtime_ms=(time.perf_counter() - self.paused_at) * 1e3)

    def aborted(self, reason: str) -> MigrationReport:
        return self._report("aborted", reason)
