"""The replica's ReplicaControl service: typed commands (from the controller, and from peers during
a migration), each id applied once.

A command runs on the engine thread through EngineLoop.call, so it never interleaves with a step.
Results are remembered by command id (the most recent MAX_REMEMBERED): a repeat of an id, even
one that arrives while the first is still running, gets the first answer with `repeated` set
and is not applied again. Queries (ListRequests) change nothing and simply run again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import grpc

from actors.common.commands import (
    QUERIES,
    Abort,
    AbortResult,
    AdapterInfo,
    AdapterList,
    Command,
    CommandResult,
    Cordon,
    Done,
    ListAdapters,
    ListRequests,
    LoadAdapter,
    PlaceAdapter,
    RequestList,
    Result,
    Uncordon,
    UnloadAdapter,
)
from actors.common.errors import CommandRefused, ErrorKind, ReplicaError
from actors.common.wire import chunk_from_frame, command_from_pb, result_to_pb
from actors.lora.adapter import AdapterError, LoRAAdapter
from actors.migration.service import MigrationCommands
from actors.replica.loop import EngineLoop
from protos import replica_pb2, replica_pb2_grpc

logger = logging.getLogger(__name__)

T = TypeVar("T")
MAX_REMEMBERED = 4096
Handler = Callable[[Any, str], Awaitable[Result]]


class CommandExecutor:
    """Runs commands against one engine loop; lives on the replica's gRPC event loop."""

    def __init__(self, engine_loop: EngineLoop, migration: MigrationCommands | None = None) -> None:
        self._engine_loop = engine_loop
        self._done: OrderedDict[str, tuple[Command, CommandResult]] = OrderedDict()
        self._running: dict[str, tuple[Command, asyncio.Task[CommandResult]]] = {}
        # Each handler takes (command, command id) and returns a result body, or raises
        # CommandRefused with a typed error.
        self._handlers: dict[type, Handler] = {
            Cordon: self._cordon,
            Uncordon: self._uncordon,
            Abort: self._abort,
            ListRequests: self._list_requests,
            LoadAdapter: self._load_adapter,
            UnloadAdapter: self._unload_adapter,
            ListAdapters: self._list_adapters,
            PlaceAdapter: self._place_adapter,
        }
        if migration is not None:
            self._handlers.update(migration.handlers())

    async def execute(self, command_id: str, command: Command | None) -> CommandResult:
        if not command_id:
            return _refused("", ErrorKind.INVALID_ARGUMENT, "must be non-empty", "command_id")
        if command is None:
            return _refused(
                command_id, ErrorKind.UNKNOWN_COMMAND, "this replica has no such command"
            )
        seen = self._done.get(command_id) or self._running.get(command_id)
        if seen is not None:
            first, answer = seen
            if first != command:
                return _refused(
                    command_id,
                    ErrorKind.CONFLICT,
                    f"already used for {type(first).__name__}, not {type(command).__name__}",
                    "command_id",
                )
            result = answer if isinstance(answer, CommandResult) else await asyncio.shield(answer)
            return replace(result, repeated=True)
        # A task, so a caller that goes away (a timed-out RPC) does not cancel the command.
        task = asyncio.ensure_future(self._run(command_id, command))
        if not isinstance(command, QUERIES):
            self._running[command_id] = (command, task)
            task.add_done_callback(lambda t: self._remember(command_id, command, t))
        return await asyncio.shield(task)

    def _remember(self, command_id: str, command: Command, task: asyncio.Task) -> None:
        self._running.pop(command_id, None)
        if task.cancelled():
            return
        self._done[command_id] = (command, task.result())
        while len(self._done) > MAX_REMEMBERED:
            self._done.popitem(last=False)

    async def _run(self, command_id: str, command: Command) -> CommandResult:
        try:
            body = await self._handlers[type(command)](command, command_id)
        except CommandRefused as exc:
            return CommandResult(command_id, error=exc.error)
        except Exception as exc:  # a failed command is an answer, never a dead servicer
            logger.exception("command %s (%s) failed", command_id, type(command).__name__)
            return CommandResult(command_id, error=ReplicaError.internal(exc))
        logger.info("command %s: %s applied", command_id, type(command).__name__)
        return CommandResult(command_id, body)

    async def _on_engine(self, fn: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self._engine_loop.call(fn))

    # ---- handlers: one per command type ------------------------------------------------------

    async def _cordon(self, command: Cordon, command_id: str) -> Result:
        await self._on_engine(lambda: self._engine_loop.set_cordoned(True))
        return Done()

    async def _uncordon(self, command: Uncordon, command_id: str) -> Result:
        await self._on_engine(lambda: self._engine_loop.set_cordoned(False))
        return Done()

    async def _abort(self, command: Abort, command_id: str) -> Result:
        found = await self._on_engine(lambda: self._engine_loop.abort_now(command.request_id))
        return AbortResult(found)

    async def _list_requests(self, command: ListRequests, command_id: str) -> Result:
        infos = await self._on_engine(self._engine_loop.list_requests)
        return RequestList(tuple(infos))

    async def _load_adapter(self, command: LoadAdapter, command_id: str) -> Result:
        engine = self._engine_loop.engine
        try:
            # Reading and checking the files off the engine thread: decoding goes on meanwhile.
            read = await asyncio.to_thread(engine.adapters.prepare, command.name, command.path)
            adapter = await self._on_engine(lambda: engine.install_adapter(read))
        except AdapterError as exc:
            raise _adapter_refused(exc) from exc
        return adapter_info(adapter)

    async def _list_adapters(self, command: ListAdapters, command_id: str) -> Result:
        engine = self._engine_loop.engine
        listing = await self._on_engine(engine.adapters.listing)
        return AdapterList(tuple(adapter_info(a) for a in listing))

    async def _place_adapter(self, command: PlaceAdapter, command_id: str) -> Result:
        engine = self._engine_loop.engine
        try:
            placed = await self._on_engine(
                lambda: engine.place_adapter(command.name, command.resident)
            )
        except AdapterError as exc:
            raise _adapter_refused(exc, ErrorKind.NOT_FOUND) from exc
        if not placed:
            where = "load it into a device slot" if command.resident else "evict it"
            raise CommandRefused(
                ErrorKind.CONFLICT, f"cannot {where}: running requests hold the slots", "name"
            )
        return Done()

    async def _unload_adapter(self, command: UnloadAdapter, command_id: str) -> Result:
        engine = self._engine_loop.engine
        try:
            await self._on_engine(lambda: engine.remove_adapter(command.name))
        except AdapterError as exc:
            raise _adapter_refused(exc, ErrorKind.NOT_FOUND) from exc
        return Done()


def adapter_info(adapter: LoRAAdapter) -> AdapterInfo:
    return AdapterInfo(adapter.name, adapter.version, adapter.rank, adapter.modules, adapter.path)


def _adapter_refused(exc: AdapterError, kind: ErrorKind = ErrorKind.INVALID_ARGUMENT) -> Exception:
    """An AdapterError ("field: reason") as a typed refusal naming the field."""
    field, _, reason = str(exc).partition(": ")
    return CommandRefused(kind, reason or str(exc), field if reason else "")


def _refused(command_id: str, kind: ErrorKind, message: str, field: str = "") -> CommandResult:
    return CommandResult(command_id, error=ReplicaError(kind, message, field))


class ReplicaControlServicer(replica_pb2_grpc.ReplicaControlServicer):
    def __init__(
        self, executor: CommandExecutor, migration: MigrationCommands | None = None
    ) -> None:
        self._executor = executor
        self._migration = migration

    async def Execute(
        self, request: replica_pb2.Command, context: object
    ) -> replica_pb2.CommandResult:
        result = await self._executor.execute(request.command_id, command_from_pb(request))
        return result_to_pb(result)

    async def PushBlocks(self, request: bytes, context: object) -> replica_pb2.CommandResult:
        """A BlockChunk as its raw frame (see wire.chunk_frame): the KV bytes are read in place."""
        if self._migration is None:
            return result_to_pb(_refused("", ErrorKind.UNKNOWN_COMMAND, "no migration here"))
        try:
            chunk, payload = chunk_from_frame(request)
        except ValueError as exc:
            return result_to_pb(_refused("", ErrorKind.INVALID_ARGUMENT, str(exc), "data"))
        try:
            body = await self._migration.push(chunk, payload)
        except CommandRefused as exc:
            return result_to_pb(CommandResult("", error=exc.error))
        return result_to_pb(CommandResult("", body))


def add_control_to_server(servicer: ReplicaControlServicer, server: grpc.aio.Server) -> None:
    """ReplicaControl's methods, as the generated registration has them, except that PushBlocks
    receives its request unparsed (a frame of tens of MiB is not copied through protobuf)."""
    service = replica_pb2.DESCRIPTOR.services_by_name["ReplicaControl"]
    result = replica_pb2.CommandResult.SerializeToString
    handlers = {
        "Execute": grpc.unary_unary_rpc_method_handler(
            servicer.Execute, replica_pb2.Command.FromString, result
        ),
        "PushBlocks": grpc.unary_unary_rpc_method_handler(servicer.PushBlocks, None, result),
    }
    missing = {m.name for m in service.methods} - set(handlers)
    if missing:
        raise RuntimeError(f"ReplicaControl methods without a handler: {sorted(missing)}")
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
