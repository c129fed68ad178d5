"""ReplicaClient: the ingress's one wrapper around a replica's gRPC stub.

One channel and ONE bidirectional Generate stream per (process, replica) carry every request;
a reader task fans each DeltaBatch out to the per-request queues.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from actors.common.config import GrpcSecurity
from actors.common.grpc_security import aio_channel
from actors.common.types import GenerateDelta, GenerateSpec, ModelInfo
from actors.common.wire import batch_from_pb, model_info_from_pb, spec_to_pb
from protos import replica_pb2, replica_pb2_grpc

logger = logging.getLogger(__name__)


class ReplicaUnavailable(ConnectionError):
    """The replica's stream broke mid-request: re-dispatch with `resume_token_ids`."""


@dataclass
class _Stream:
    outgoing: asyncio.Queue
    call: grpc.aio.StreamStreamCall | None = None
    reader: asyncio.Task | None = None
    subscribers: dict[str, asyncio.Queue] = field(default_factory=dict)
    dead: bool = False


class ReplicaClient:
    def __init__(
        self, address: str, security: GrpcSecurity | None = None, timeout_s: float = 5.0
    ) -> None:
        self.address = address
        self._security = security
        self._timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub: replica_pb2_grpc.ReplicaStub | None = None
        self._stream: _Stream | None = None

    # ---- channel and stream ----------------------------------------------------------------

    def _ensure_stub(self) -> replica_pb2_grpc.ReplicaStub:
        loop = asyncio.get_running_loop()
        if self._stub is None or self._loop is not loop:
            # aio channels belong to the loop that made them.
            self._loop = loop
            self._stream = None
            self._channel = aio_channel(self.address, self._security)
            self._stub = replica_pb2_grpc.ReplicaStub(self._channel)
        return self._stub

    def _ensure_stream(self) -> _Stream:
        stub = self._ensure_stub()
        if self._stream is not None and not self._stream.dead:
            return self._stream
        stream = _Stream(outgoing=asyncio.Queue())
        stream.call = stub.Generate(_drain(stream.outgoing))
        stream.reader = asyncio.create_task(self._read(stream))
        self._stream = stream
        return stream

    async def _read(self, stream: _Stream) -> None:
        error: BaseException
        try:
            async for batch in stream.call:
                for delta in batch_from_pb(batch):
                    queue = stream.subscribers.get(delta.request_id)
                    if queue is not None:
                        queue.put_nowait(delta)
            error = ReplicaUnavailable(f"replica {self.address} closed the stream")
        except grpc.aio.AioRpcError as exc:
            error = ReplicaUnavailable(
                f"replica {self.address}: {exc.code().name}: {exc.details()}"
            )
        except asyncio.CancelledError:
            error = ReplicaUnavailable(f"replica {self.address}: client closed")
        stream.dead = True
        for queue in stream.subscribers.values():
            queue.put_nowait(error)

    # ---- public API ------------------------------------------------------------------------

    async def generate(self, spec: GenerateSpec) -> AsyncIterator[GenerateDelta]:
        """Stream the request's deltas until every choice finished, or it migrated.

        Raises ReplicaUnavailable when the replica goes away mid-request. Leaving the iterator
        early (or cancelling the task) aborts the request on the replica. A delta with
        `migrated_to` is the last one here: the request goes on at that replica (`attach`).
        """
        call = replica_pb2.GenerateCall(spec=spec_to_pb(spec))
        async for delta in self._subscribe(spec.request_id, call, max(spec.sampling.n, 1)):
            yield delta

    async def attach(self, request_id: str) -> AsyncIterator[GenerateDelta]:
        """Follow a request that migrated to this replica: its deltas from where the source's
        stream stopped, as `generate` yields them."""
        call = replica_pb2.GenerateCall(attach_request_id=request_id)
        async for delta in self._subscribe(request_id, call, 1):
            yield delta

    async def _subscribe(
        self, request_id: str, call: replica_pb2.GenerateCall, choices: int
    ) -> AsyncIterator[GenerateDelta]:
        stream = self._ensure_stream()
        if request_id in stream.subscribers:
            raise ValueError(f"request_id: {request_id!r} is already in flight")
        queue: asyncio.Queue = asyncio.Queue()
        stream.subscribers[request_id] = queue
        stream.outgoing.put_nowait(call)
        choices_left = choices
        try:
            while choices_left > 0:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.ends_request or item.migrated_to is not None:
                    choices_left = 0
                elif item.finished:
                    choices_left -= 1
        finally:
            stream.subscribers.pop(request_id, None)
            if choices_left > 0 and not stream.dead:
                stream.outgoing.put_nowait(replica_pb2.GenerateCall(abort_request_id=request_id))

    async def health(self) -> bool:
        try:
            reply = await self._ensure_stub().Health(
                replica_pb2.HealthRequest(), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError:
            return False
        return reply.ok

    async def describe_model(self) -> ModelInfo:
        """The replica's model limits and tokenizer files (raises grpc.aio.AioRpcError)."""
        reply = await self._ensure_stub().DescribeModel(
            replica_pb2.DescribeModelRequest(), timeout=self._timeout_s
        )
        return model_info_from_pb(reply)

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.outgoing.put_nowait(None)
            if stream.reader is not None:
                stream.reader.cancel()
        if self._channel is not None and self._loop is asyncio.get_running_loop():
            await self._channel.close()
        self._channel = None
        self._stub = None


async def _drain(queue: asyncio.Queue) -> AsyncIterator[replica_pb2.GenerateCall]:
    while True:
        item = await queue.get()
        if item is None:
            return
        yield item
