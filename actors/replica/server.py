"""The replica's gRPC server: the token plane (Replica: Generate, one multiplexed stream per
connection; Health; DescribeModel) and the control plane (ReplicaControl, control.py) on one port.

grpc.aio runs on its own event-loop thread; the engine loop runs on another. Each step's DeltaBatch
for a connection is built on the engine thread (column-wise, see wire.batch_to_pb) and crosses
over with one `call_soon_threadsafe` per step per connection; this thread only yields it, and
looks at the few deltas that travel whole (finished, errors) to know when a request ended.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from pathlib import Path

import grpc

from actors.common.config import GrpcSecurity, MigrationSettings
from actors.common.grpc_security import add_port, aio_server
from actors.common.tokenizer import read_tokenizer_files
from actors.common.types import GenerateDelta, ModelInfo
from actors.common.wire import model_info_to_pb, spec_from_pb
from actors.engine.engine import LLMEngine
from actors.migration.service import MigrationCommands
from actors.replica.control import CommandExecutor, ReplicaControlServicer, add_control_to_server
from actors.replica.loop import EngineLoop
from policies.cluster_view import ReplicaIdentity
from protos import replica_pb2, replica_pb2_grpc

logger = logging.getLogger(__name__)

_END = None  # queue sentinel: the connection has nothing more to send
_Item = tuple[replica_pb2.DeltaBatch, list[GenerateDelta]]


class _ConnectionSink:
    """One Generate stream's outbox; `put_batch` is called on the engine thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self.closed = False

    def put_batch(self, batch: replica_pb2.DeltaBatch, whole: list[GenerateDelta]) -> None:
        if not self.closed:
            self._loop.call_soon_threadsafe(self.queue.put_nowait, (batch, whole))


class ReplicaServicer(replica_pb2_grpc.ReplicaServicer):
    def __init__(
        self, engine_loop: EngineLoop, identity: ReplicaIdentity, model_info: ModelInfo
    ) -> None:
        self._engine_loop = engine_loop
        self._identity = identity
        self._model_info = model_info_to_pb(model_info)  # built once: it never changes

    async def Generate(
        self, request_iterator: AsyncIterator[replica_pb2.GenerateCall], context: object
    ) -> AsyncIterator[replica_pb2.DeltaBatch]:
        sink = _ConnectionSink(asyncio.get_running_loop())
        open_requests: dict[str, int] = {}  # request id -> choices not finished yet
        reader = asyncio.create_task(self._read_calls(request_iterator, sink, open_requests))
        try:
            while True:
                item = await sink.queue.get()
                if item is _END:
                    if not open_requests:
                        return
                    continue
                batch, whole = item
                _close_finished(whole, open_requests)
                yield batch
                if reader.done() and not open_requests:
                    return
        finally:
            sink.closed = True
            reader.cancel()
            self._engine_loop.detach(sink)

    async def _read_calls(
        self,
        calls: AsyncIterator[replica_pb2.GenerateCall],
        sink: _ConnectionSink,
        open_requests: dict[str, int],
    ) -> None:
        try:
            async for call in calls:
                if call.HasField("spec"):
                    spec = spec_from_pb(call.spec)
                    open_requests.setdefault(spec.request_id, max(spec.sampling.n, 1))
                    self._engine_loop.submit(spec, sink)
                elif call.HasField("abort_request_id"):
                    self._engine_loop.abort(call.abort_request_id)
                elif call.HasField("attach_request_id"):
                    open_requests.setdefault(call.attach_request_id, 1)
                    self._engine_loop.attach(call.attach_request_id, sink)
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            return
        finally:
            # The client half-closed: finish the requests it has open, then end the stream.
            sink.queue.put_nowait(_END)

    async def Health(
        self, request: replica_pb2.HealthRequest, context: object
    ) -> replica_pb2.HealthReply:
        return replica_pb2.HealthReply(
            ok=self._engine_loop.alive,
            replica_id=self._identity.replica_id,
            incarnation=self._identity.incarnation,
        )

    async def DescribeModel(
        self, request: replica_pb2.DescribeModelRequest, context: object
    ) -> replica_pb2.ModelInfo:
        return self._model_info


def _close_finished(whole: list[GenerateDelta], open_requests: dict[str, int]) -> None:
    for d in whole:
        if d.migrated_to is not None:  # it left: its stream goes on elsewhere
            open_requests.pop(d.request_id, None)
            continue
        if not d.finished or d.request_id not in open_requests:
            continue
        left = open_requests[d.request_id] - 1
        if left <= 0 or d.ends_request:
            del open_requests[d.request_id]
        else:
            open_requests[d.request_id] = left


def model_info(engine: LLMEngine) -> ModelInfo:
    """The limits `engine` enforces and its tokenizer's files, for the ingress."""
    path = engine.config.model.model  # the resolved checkpoint directory
    return ModelInfo(
        model=path,
        max_model_len=engine.max_model_len,
        vocab_size=engine.runner.vocab_size,
        block_size=engine.config.cache.block_size,
        tokenizer_files=read_tokenizer_files(Path(path)),
    )


class ReplicaServer:
    """Builds the engine, binds the gRPC port, and runs the engine loop and the server."""

    def __init__(
        self,
        engine_factory: Callable[[], LLMEngine],
        replica_id: str,
        *,
        bind_host: str = "127.0.0.1",
        advertise_host: str = "127.0.0.1",
        port: int = 0,
        security: GrpcSecurity | None = None,
        node_id: str = "",
        incarnation: str = "",
        migration: MigrationSettings | None = None,
        stall_after_s: float = 60.0,
    ) -> None:
        self._aio_loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._aio_loop.run_forever, name="replica-grpc")
        self._thread.daemon = True
        self._thread.start()
        try:
            engine = engine_factory()
        except BaseException:
            self._aio_loop.call_soon_threadsafe(self._aio_loop.stop)
            raise
        self._server = self._call(self._make_server(security))
        bound = add_port(self._server, f"{bind_host}:{port}", security)
        self.identity = ReplicaIdentity(
            replica_id,
            f"{advertise_host}:{bound}",
            node_id,
            incarnation,
            pid=os.getpid(),
            started_at=time.time(),
        )
        self.engine_loop = EngineLoop(engine, self.identity, stall_after_s=stall_after_s)
        servicer = ReplicaServicer(self.engine_loop, self.identity, model_info(engine))
        replica_pb2_grpc.add_ReplicaServicer_to_server(servicer, self._server)
        migrations = MigrationCommands(
            self.engine_loop, migration or MigrationSettings(), self.identity.address, security
        )
        executor = CommandExecutor(self.engine_loop, migrations)
        control = ReplicaControlServicer(executor, migrations)
        add_control_to_server(control, self._server)
        self.engine_loop.start()
        self._call(self._server.start())
        logger.info("replica %s serving on %s", replica_id, self.identity.address)

    @property
    def address(self) -> str:
        return self.identity.address

    @staticmethod
    async def _make_server(security: GrpcSecurity | None) -> grpc.aio.Server:
        return aio_server(security)  # created on the loop that will serve it

    def _call(self, coro: object) -> object:
        fut: Future = asyncio.run_coroutine_threadsafe(coro, self._aio_loop)
        return fut.result(timeout=60)

    def stop(self, grace_s: float = 1.0) -> None:
        self._call(self._server.stop(grace_s))
        self.engine_loop.stop()
        self._aio_loop.call_soon_threadsafe(self._aio_loop.stop)
        self._thread.join(5)
