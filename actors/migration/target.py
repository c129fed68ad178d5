"""The destination's side of a migration: reserve blocks, take them in, commit (or abort).

A reservation is blocks of this replica's KV pool that belong to no request yet; the stages
write into them (PushBlocks for the host transport, PullBlocks for cuda_ipc); the commit hands
them to the imported request, which joins the running batch and waits for its ingress to attach
(its deltas are parked until then). A reservation whose source sends nothing for
reservation_timeout_s (it died mid-copy) is freed; a committed request nobody attaches to within
attach_timeout_s is aborted. Every command is idempotent: the replica's command table
answers a repeated id with its first answer, and an abort of an unknown migration is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from actors.common.commands import (
    AbortMigrateIn,
    BlockChunk,
    CommitMigrateIn,
    Done,
    PrepareMigrateIn,
    PullBlocks,
    Reservation,
)
from actors.common.config import MigrationSettings
from actors.common.errors import CommandRefused, ErrorKind
from actors.lora.adapter import AdapterError
from actors.migration.transport import from_bytes
from actors.replica.loop import EngineLoop

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _refused(kind: ErrorKind, message: str, field_name: str = "") -> CommandRefused:
    return CommandRefused(kind, message, field_name)


@dataclass
class _Incoming:
    request_id: str
    transport: str
    block_ids: list[int]
    touched: float = field(default_factory=time.monotonic)  # the source's last sign of life
    source: Any = None  # cuda_ipc: the source's KV cache, mapped here
    # False once it is committed or released: a block write not begun then skips, rather than
    # write into blocks that may belong to someone else now.
    live: bool = True
    # Held by a block write in progress (off the engine thread); a commit or a release takes
    # it first, so blocks change hands only when no write into them is under way.
    writing: asyncio.Lock = field(default_factory=asyncio.Lock)


class MigrationTarget:
    """One replica's incoming migrations; runs on the replica's gRPC event loop."""

    def __init__(
        self,
        engine_loop: EngineLoop,
        settings: MigrationSettings,
        map_source: Callable[[bytes], Any] | None = None,
    ) -> None:
        self._loop = engine_loop
        self._settings = settings
        self._map_source = map_source  # cuda_ipc: handle -> the source's KV cache tensor
        self._incoming: dict[str, _Incoming] = {}
        self._janitor: asyncio.Task[None] | None = None
        self._copy_stream: Any = None  # GPU: the side stream block writes run on

    async def _on_engine(self, fn: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self._loop.call(fn))

    def _get(self, migration_id: str) -> _Incoming:
        incoming = self._incoming.get(migration_id)
        if incoming is None:
            raise _refused(
                ErrorKind.NOT_FOUND, f"no migration {migration_id!r} here", "migration_id"
            )
        incoming.touched = time.monotonic()
        return incoming

    def _pop(self, migration_id: str) -> _Incoming | None:
        incoming = self._incoming.pop(migration_id, None)
        if incoming is not None:
            incoming.live = False
        self._loop.migrating_in = len(self._incoming)
        return incoming

    # ---- commands ----------------------------------------------------------------------------

    async def prepare(self, cmd: PrepareMigrateIn) -> Reservation:
        if cmd.migration_id in self._incoming:
            return Reservation(len(self._incoming[cmd.migration_id].block_ids))
        if len(self._incoming) >= self._settings.max_concurrent:
            raise _refused(ErrorKind.OVERLOADED, f"{len(self._incoming)} migrations coming in")
        if self._loop.cordoned:
            raise _refused(ErrorKind.UNAVAILABLE, "this replica is cordoned")
        source = None
        if cmd.transport == "cuda_ipc":
            if self._map_source is None:
                raise _refused(ErrorKind.INVALID_ARGUMENT, "no cuda_ipc here", "transport")
            source = await asyncio.to_thread(self._map_source, cmd.source_handle)
        elif cmd.transport != "host":
            raise _refused(ErrorKind.INVALID_ARGUMENT, f"unknown {cmd.transport!r}", "transport")
        engine = self._loop.engine

        def reserve() -> list[int] | None:
            if cmd.adapter_id:  # a request whose adapter is not served here cannot continue here
                engine.adapters.for_request(cmd.adapter_id)
            return engine.reserve_blocks(cmd.num_blocks)

        try:
            block_ids = await self._on_engine(reserve)
        except AdapterError as exc:
            raise _refused(ErrorKind.INVALID_ARGUMENT, str(exc), "adapter_id") from exc
        if block_ids is None:
            raise _refused(ErrorKind.OVERLOADED, f"{cmd.num_blocks} KV blocks are not free here")
        self._incoming[cmd.migration_id] = _Incoming(
            cmd.request_id, cmd.transport, block_ids, source=source
        )
        self._loop.migrating_in = len(self._incoming)
        self._start_janitor()
        return Reservation(len(block_ids))

    async def push(self, chunk: BlockChunk, payload: memoryview) -> Done:
        """Host transport: write `chunk`'s blocks (their bytes: `payload`) into the reservation."""
        incoming = self._get(chunk.migration_id)
        ids = await self._room(incoming, chunk.start + chunk.count)
        runner = self._loop.engine.runner
        shape = tuple(runner.kv_cache.shape)
        shape = (*shape[:2], chunk.count, *shape[3:])
        try:
            data = from_bytes(payload, chunk.dtype, shape)  # a view: no copy
        except ValueError as exc:
            raise _refused(ErrorKind.INVALID_ARGUMENT, str(exc), "data") from exc
        dst = ids[chunk.start : chunk.start + chunk.count]
        await self._write(incoming, lambda: runner.import_blocks(dst, data))
        return Done()

    async def pull(self, cmd: PullBlocks) -> Done:
        """cuda_ipc: copy the source's blocks from its mapped cache into the reservation."""
        incoming = self._get(cmd.migration_id)
        if incoming.source is None:
            raise _refused(ErrorKind.INVALID_ARGUMENT, "not a cuda_ipc migration", "migration_id")
        ids = await self._room(incoming, cmd.start + len(cmd.source_block_ids))
        dst = ids[cmd.start : cmd.start + len(cmd.source_block_ids)]
        runner, source = self._loop.engine.runner, incoming.source
        src = list(cmd.source_block_ids)
        await self._write(incoming, lambda: runner.copy_blocks_from(source, src, dst))
        return Done()

    async def commit(self, cmd: CommitMigrateIn) -> Done:
        incoming = self._get(cmd.migration_id)
        if len(incoming.block_ids) < cmd.num_blocks:
            raise _refused(ErrorKind.CONFLICT, "the commit names blocks never written")
        self._pop(cmd.migration_id)  # from here the request (or, on failure, nobody) owns them
        ids, extra = incoming.block_ids[: cmd.num_blocks], incoming.block_ids[cmd.num_blocks :]
        engine = self._loop.engine
        async with incoming.writing:  # a write still under way lands before the request runs
            pass

        def adopt() -> None:
            engine.release_blocks(extra)
            try:
                self._loop.adopt_migrated(cmd.state, ids)
            except ValueError:
                engine.release_blocks(ids)
                raise

        try:
            await self._on_engine(adopt)
        except ValueError as exc:
            raise _refused(ErrorKind.INVALID_ARGUMENT, str(exc), "state") from exc
        rid = cmd.state.request_id
        asyncio.get_running_loop().call_later(
            self._settings.attach_timeout_s, lambda: asyncio.ensure_future(self._unfollowed(rid))
        )
        logger.info("migration %s: %s now runs here", cmd.migration_id, rid)
        return Done()

    async def abort(self, cmd: AbortMigrateIn) -> Done:
        await self._release(cmd.migration_id, "aborted by the source")
        return Done()

    # ---- helpers -----------------------------------------------------------------------------

    async def _write(self, incoming: _Incoming, write: Callable[[], None]) -> None:
        """Run a block write off the engine thread (the request's neighbours keep stepping, and
        the last copy of a paused request waits for no step), unless the reservation ended.

        Safe beside the steps: reserved blocks are in no block table, so no step reads or
        writes them; a commit or release waits for the write (`writing`)."""
        async with incoming.writing:
            if not incoming.live:
                raise _refused(ErrorKind.NOT_FOUND, "the migration ended while its blocks arrived")
            await asyncio.to_thread(self._copy, write)

    def _copy(self, write: Callable[[], None]) -> None:
        """On a worker thread: `write`, on a side stream when on a GPU, finished on return."""
        device = self._loop.engine.runner.device
        if device.type != "cuda":
            write()
            return
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(device)
        with torch.cuda.stream(self._copy_stream):
            write()
        self._copy_stream.synchronize()

    async def _room(self, incoming: _Incoming, needed: int) -> list[int]:
        """The reservation, grown (the request kept decoding) to at least `needed` blocks."""
        more = needed - len(incoming.block_ids)
        if more > 0:
            engine = self._loop.engine

            def grow() -> list[int] | None:
                ids = engine.reserve_blocks(more) if incoming.live else None
                if ids is not None:
                    incoming.block_ids.extend(ids)  # on the engine thread: a release sees them
                return ids

            if await self._on_engine(grow) is None:
                raise _refused(ErrorKind.OVERLOADED, f"{more} more KV blocks are not free here")
        return incoming.block_ids

    async def _release(self, migration_id: str, why: str) -> None:
        incoming = self._pop(migration_id)
        if incoming is None:
            return
        engine = self._loop.engine
        async with incoming.writing:  # no write into them is under way when they go back
            await self._on_engine(lambda: engine.release_blocks(incoming.block_ids))
        logger.info("migration %s: reservation freed (%s)", migration_id, why)

    async def _unfollowed(self, request_id: str) -> None:
        if await self._on_engine(lambda: self._loop.abort_if_unattached(request_id)):
            logger.warning("migrated request %s: nobody followed it; aborted", request_id)

    def _start_janitor(self) -> None:
        if self._janitor is None or self._janitor.done():
            self._janitor = asyncio.ensure_future(self._expire())

    async def _expire(self) -> None:
        """Free reservations whose source went silent (it died mid-copy)."""
        timeout = self._settings.reservation_timeout_s
        while self._incoming:
            await asyncio.sleep(min(timeout, 1.0))  # paces the check; nothing to compute
            now = time.monotonic()
            for mid, incoming in list(self._incoming.items()):
                if now - incoming.touched > timeout:
                    await self._release(mid, f"no word from its source for {timeout:.0f}s")
