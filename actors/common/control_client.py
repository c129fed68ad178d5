"""ReplicaControlClient: the one wrapper around a replica's ReplicaControl stub (the controller's
commands, and a migration's source talking to its destination)."""

from __future__ import annotations

import asyncio

import grpc

from actors.common.commands import BlockChunk, Command, CommandResult
from actors.common.config import TlsFiles
from actors.common.tls import aio_channel
from actors.common.wire import chunk_to_pb, command_to_pb, result_from_pb
from protos import replica_pb2_grpc


class ReplicaControlClient:
    def __init__(self, address: str, tls: TlsFiles | None = None) -> None:
        self.address = address
        self._tls = tls
        self._loop: asyncio.AbstractEventLoop | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub: replica_pb2_grpc.ReplicaControlStub | None = None

    def _ensure_stub(self) -> replica_pb2_grpc.ReplicaControlStub:
        loop = asyncio.get_running_loop()
        if self._stub is None or self._loop is not loop:
            # aio channels belong to the loop that made them.
            self._loop = loop
            self._channel = aio_channel(self.address, self._tls)
            self._stub = replica_pb2_grpc.ReplicaControlStub(self._channel)
        return self._stub

    async def execute(self, command: Command, command_id: str, timeout_s: float) -> CommandResult:
        """One attempt; raises grpc.aio.AioRpcError when the replica does not answer."""
        reply = await self._ensure_stub().Execute(
            command_to_pb(command, command_id), timeout=timeout_s
        )
        return result_from_pb(reply)

    async def push_blocks(self, chunk: BlockChunk, timeout_s: float) -> CommandResult:
        """A migration's host transport: one chunk of KV blocks (raises AioRpcError)."""
        reply = await self._ensure_stub().PushBlocks(chunk_to_pb(chunk), timeout=timeout_s)
        return result_from_pb(reply)

    async def close(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None and self._loop is asyncio.get_running_loop():
            await channel.close()
