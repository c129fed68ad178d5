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
from actors.common.config import GrpcSecurity, MigrationSettings
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
        security: GrpcSecurity | None = None,
    ) -> None:
        self._loop = engine_loop
        self._settings = settings
        self._own_address = own_address
        self._security = security
        self.source = MigrationSource(engine_loop, settings)
        on_cuda = engine_loop.engine.runner.device.type == "cuda"
        self.target = MigrationTarget(engine_loop, settings, _open_handle if on_cuda else None)
        self._peers: dict[str, ReplicaControlClient] = {}

    def handlers(self) -> dict[type, Callable[[Any, str], Awaitable[Any]]]:
        return {
            MigrateOut: self._migrate_out,
            PrepareMigrateIn: lambda c, _: self.target.prepare(c),
            PullBlocks: lambda c, _: self.target.pull(c),
            CommitMigrateIn: lambda c, _: self.target.commit(c),
            AbortMigrateIn: lambda c, _: self.target.abort(c),
        }

    async def push(self, chunk: BlockChunk, payload: memoryview) -> Done:
        return await self.target.push(chunk, payload)

    async def _migrate_out(self, command: MigrateOut, command_id: str) -> MigrationReport:
        if command.target_address == self._own_address:
            raise CommandRefused(
                ErrorKind.INVALID_ARGUMENT, "the request already runs here", "target_address"
            )
        peer = self._peer(command.target_address)
        send = self._sender(peer)
        return await self.source.migrate(
            command_id,
            command.request_id,
            command.target_address,
            send,
            self._transports(peer, command.transport or self._settings.transport),
            command.max_stages,
        )

    def _transports(self, peer: ReplicaControlClient, choice: str) -> list[Transport]:
        """The transports to offer the destination, best first (auto: cuda_ipc on a GPU)."""
        if choice not in ("auto", "host", "cuda_ipc"):
            raise CommandRefused(
                ErrorKind.INVALID_ARGUMENT, f"unknown transport {choice!r}", "transport"
            )
        runner = self._loop.engine.runner
        on_cuda = runner.device.type == "cuda"
        offered: list[Transport] = []
        if choice == "cuda_ipc" or (choice == "auto" and on_cuda):
            if not on_cuda:
                raise CommandRefused(
                    ErrorKind.INVALID_ARGUMENT, "cuda_ipc needs a replica on a GPU", "transport"
                )
            from actors.migration.cuda_ipc import CudaIpcTransport

            offered.append(CudaIpcTransport(runner.kv_cache, self._sender(peer)))
        if choice != "cuda_ipc":
            timeout = self._settings.command_timeout_s

            async def push(migration_id: str, frame: bytes) -> CommandResult:
                return await _retrying(lambda: peer.push_blocks(frame, timeout), migration_id)

            offered.append(
                HostTransport(
                    self._loop.engine, self.source.on_engine, push, self._settings.chunk_bytes
                )
            )
        return offered

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
            peer = self._peers[address] = ReplicaControlClient(address, self._security)
        return peer


def _open_handle(handle: bytes) -> Any:
    """cuda_ipc: the source's KV cache, mapped here (torch and CUDA only where it is used)."""
    from actors.migration.cuda_ipc import open_handle

    try:
        return open_handle(handle)
    except Exception as exc:  # another node, another GPU numbering: the source falls back
        raise CommandRefused(
            ErrorKind.INVALID_ARGUMENT, f"cannot map the source's KV cache: {exc}", "transport"
        ) from exc


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
