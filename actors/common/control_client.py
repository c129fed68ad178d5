"""ReplicaControlClient: the one wrapper around a replica's ReplicaControl stub (the controller's
commands, and a migration's source talking to its destination)."""

from __future__ import annotations

import asyncio

import grpc

from actors.common.commands import Command, CommandResult
from actors.common.config import GrpcSecurity
from actors.common.grpc_security import aio_channel
from actors.common.wire import command_to_pb, result_from_pb
from protos import replica_pb2, replica_pb2_grpc

_SERVICE = replica_pb2.DESCRIPTOR.services_by_name["ReplicaControl"]
_PUSH_BLOCKS = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['PushBlocks'].name}"


class ReplicaControlClient:
    def __init__(self, address: str, security: GrpcSecurity | None = None) -> None:
        self.address = address
        self._security = security
        self._loop: asyncio.AbstractEventLoop | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub: replica_pb2_grpc.ReplicaControlStub | None = None
        self._push: grpc.aio.UnaryUnaryMultiCallable | None = None

    def _ensure_stub(self) -> replica_pb2_grpc.ReplicaControlStub:
        loop = asyncio.get_running_loop()
        if self._stub is None or self._loop is not loop:
            # aio channels belong to the loop that made them.
            self._loop = loop
            self._channel = aio_channel(self.address, self._security)
            self._stub = replica_pb2_grpc.ReplicaControlStub(self._channel)
            # PushBlocks' request goes out as the bytes it already is (no serializer).
            self._push = self._channel.unary_unary(
                _PUSH_BLOCKS, response_deserializer=replica_pb2.CommandResult.FromString
            )
        return self._stub

    async def execute(self, command: Command, command_id: str, timeout_s: float) -> CommandResult:
        """One attempt; raises grpc.aio.AioRpcError when the replica does not answer."""
        reply = await self._ensure_stub().Execute(
            command_to_pb(command, command_id), timeout=timeout_s
        )
        return result_from_pb(reply)

    async def push_blocks(self, frame: bytes, timeout_s: float) -> CommandResult:
        """A migration's host transport: one chunk of KV blocks as wire.chunk_frame built it,
        sent as it is (raises AioRpcError)."""
        self._ensure_stub()
        assert self._push is not None
        return result_from_pb(await self._push(frame, timeout=timeout_s))

    async def close(self) -> None:
        channel, self._channel, self._stub, self._push = self._channel, None, None, None
        if channel is not None and self._loop is asyncio.get_running_loop():
            await channel.close()
