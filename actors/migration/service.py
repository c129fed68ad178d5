"""The migration commands of a replica's ReplicaControl service, in one place.

`MigrateOut` (from the controller) makes this replica the source; `PrepareMigrateIn`,
`PullBlocks`, `CommitMigrateIn`, `AbortMigrateIn` and the PushBlocks RPC (from a peer that is the
source) make it the destination. The replica's command table (actors/replica/control.py) runs
them like every other command: once per id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from actors.common.commands import (
    AbortMigrateIn,
    BlockChunk,
    Command,
    CommandResult,
    CommitMigrateIn,
    Done,
    MigrateOut,
    PrepareMigrateIn,
    PullBlocks,
)
from actors.common.config import MigrationSettings, TlsFiles
from actors.common.control_client import ReplicaControlClient
from actors.common.errors import CommandRefused, ErrorKind, ReplicaError
from actors.common.migration import MigrationReport
from actors.migration.source import MigrationSource
from actors.migration.target import MigrationTarget
from actors.migration.transport import HostTransport, Transport
from actors.replica.loop import EngineLoop

# gRPC codes after which a peer command is sent again on the same id.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
ATTEMPTS = 3


class MigrationCommands:
    def __init__(
        self,
        engine_loop: EngineLoop,
        settings: MigrationSettings,
        own_address: str,
        tls: TlsFiles | None = None,
    ) -> None:
        self._loop = engine_loop
        self._settings = settings
        self._own_address = own_address
        self._tls = tls
        self.source = MigrationSource(engine_loop, settings)
        self.target = MigrationTarget(engine_loop, settings)
        self._peers: dict[str, ReplicaControlClient] = {}

    def handlers(self) -> dict[type, Callable[[Any, str], Awaitable[Any]]]:
        return {
            MigrateOut: self._migrate_out,
            PrepareMigrateIn: lambda c, _: self.target.prepare(c),
            PullBlocks: lambda c, _: self.target.pull(c),
            CommitMigrateIn: lambda c, _: self.target.commit(c),
            AbortMigrateIn: lambda c, _: self.target.abort(c),
        }

    async def push(self, chunk: BlockChunk) -> Done:
        return await self.target.push(chunk)

    async def _migrate_out(self, command: MigrateOut, command_id: str) -> MigrationReport:
        if command.target_address == self._own_address:
            raise CommandRefused(
                ErrorKind.INVALID_ARGUMENT, "the request already runs here", "target_address"
            )
        peer = self._peer(command.target_address)
        send = self._sender(peer)
        return await self.source.migrate(
            command_id, command.request_id, command.target_address, send, self._transport(peer)
        )

    def _transport(self, peer: ReplicaControlClient) -> Transport:
        timeout = self._settings.command_timeout_s
        on_engine = self.source.on_engine

        async def push(chunk: BlockChunk) -> CommandResult:
            return await _retrying(lambda: peer.push_blocks(chunk, timeout), chunk.migration_id)

        return HostTransport(self._loop.engine, on_engine, push, self._settings.chunk_bytes)

    def _sender(
        self, peer: ReplicaControlClient
    ) -> Callable[[Command, str], Awaitable[CommandResult]]:
        timeout = self._settings.command_timeout_s

        async def send(command: Command, command_id: str) -> CommandResult:
            return await _retrying(lambda: peer.execute(command, command_id, timeout), command_id)

        return send

    def _peer(self, address: str) -> ReplicaControlClient:
        peer = self._peers.get(address)
        if peer is None:
            peer = self._peers[address] = ReplicaControlClient(address, self._tls)
        return peer


async def _retrying(call: Callable[[], Awaitable[CommandResult]], command_id: str) -> CommandResult:
    """The peer's answer; the same call again when it did not answer (the id makes a repeat
    harmless); a typed UNAVAILABLE result, never an exception, when it never does."""
    last: grpc.aio.AioRpcError | None = None
    for attempt in range(ATTEMPTS):
        if attempt:
            await asyncio.sleep(0.1 * 2**attempt)
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            last = exc
            if exc.code() not in RETRYABLE:
                break
    assert last is not None
    error = ReplicaError(ErrorKind.UNAVAILABLE, f"peer: {last.code().name} {last.details()}")
    return CommandResult(command_id, error=error)
