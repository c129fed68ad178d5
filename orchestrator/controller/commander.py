"""ReplicaCommander: the one component that sends commands to replicas (ReplicaControl).

The reconciler and the admin API both go through it. Each command gets an id (or keeps the one it
is given) and is retried on that same id when the replica does not answer in time: the replica
applies an id once, so a retry after a lost reply is harmless. Every command that changes
something is recorded in the event log with its result; queries are not.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Protocol

import grpc

from actors.common.commands import (
    QUERIES,
    Command,
    CommandResult,
    ListRequests,
    MigrateOut,
    RequestInfo,
    RequestList,
)
from actors.common.config import GrpcSecurity
from actors.common.control_client import ReplicaControlClient
from actors.common.errors import ErrorKind, ReplicaError
from orchestrator.controller.events import EventKind
from orchestrator.controller.state import ControllerState
from policies.cluster_view import ReplicaState

logger = logging.getLogger(__name__)

# gRPC codes after which the same command id is sent again.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# Per attempt, for a question someone waits on: a hung replica is reported, not waited for.
QUERY_TIMEOUT_S = 2.0


class ControlClient(Protocol):
    """actors.common.control_client.ReplicaControlClient's surface (tests swap a fake in)."""

    async def execute(
        self, command: Command, command_id: str, timeout_s: float
    ) -> CommandResult: ...

    async def close(self) -> None: ...


def new_command_id() -> str:
    return f"cmd-{uuid.uuid4().hex[:16]}"


class ReplicaCommander:
    def __init__(
        self,
        state: ControllerState,
        security: GrpcSecurity | None = None,
        *,
        timeout_s: float = 5.0,
        attempts: int = 3,
        backoff_s: float = 0.2,
        connect: Callable[[str, GrpcSecurity | None], ControlClient] = ReplicaControlClient,
    ) -> None:
        self._state = state
        self._security = security
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._connect = connect
        self._clients: dict[str, ControlClient] = {}  # by replica address
        self.sent = 0

    async def send(
        self,
        replica_id: str,
        command: Command,
        command_id: str | None = None,
        timeout_s: float | None = None,
    ) -> CommandResult:
        """Send `command` to a registered replica; never raises for the replica's failures.
        `timeout_s`: per attempt (default: the commander's)."""
        command_id = command_id or new_command_id()
        record = self._state.records.get(replica_id)
        if record is None or record.report is None:
            error = ReplicaError(ErrorKind.NOT_FOUND, f"no registered replica {replica_id!r}")
            return self._log(replica_id, command, CommandResult(command_id, error=error))
        address = record.report.identity.address
        timeout = self._timeout_s if timeout_s is None else timeout_s
        result = await self._send_to(address, command, command_id, timeout)
        return self._log(replica_id, command, result)

    async def send_all(
        self, replica_ids: Iterable[str], command: Command, timeout_s: float | None = None
    ) -> dict[str, CommandResult]:
        """The same command to several replicas at once (each with its own id)."""
        ids = list(replica_ids)
        sends = (self.send(rid, command, timeout_s=timeout_s) for rid in ids)
        return dict(zip(ids, await asyncio.gather(*sends), strict=True))

    def reachable(self) -> list[str]:
        """Every registered replica not dead: the ones a command can reach."""
        return [
            r.replica_id
            for r in self._state.records.values()
            if r.report is not None and r.state is not ReplicaState.DEAD
        ]

    async def list_requests(
        self, replica_ids: Iterable[str] | None = None
    ) -> tuple[list[tuple[str, RequestInfo]], dict[str, str]]:
        """The running and waiting requests of `replica_ids` (default: every registered replica
        not dead) with their replica, and the replicas that did not answer (id -> why)."""
        if replica_ids is None:
            replica_ids = self.reachable()
        results = await self.send_all(replica_ids, ListRequests(), timeout_s=QUERY_TIMEOUT_S)
        found: list[tuple[str, RequestInfo]] = []
        missing: dict[str, str] = {}
        for replica_id, result in sorted(results.items()):
            if isinstance(result.body, RequestList):
                found.extend((replica_id, info) for info in result.body.requests)
            else:
                missing[replica_id] = str(result.error)
        return found, missing

    async def find_request(self, request_id: str) -> tuple[str, RequestInfo] | None:
        """The replica that runs `request_id` (an OpenAI id), asked of the replicas themselves."""
        found, _ = await self.list_requests()
        return next(((rid, info) for rid, info in found if info.request_id == request_id), None)

    async def _send_to(
        self, address: str, command: Command, command_id: str, timeout_s: float
    ) -> CommandResult:
        client = self._client(address)
        last: grpc.aio.AioRpcError | None = None
        for attempt in range(self._attempts):
            if attempt:
                await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
            try:
                self.sent += 1
                return await client.execute(command, command_id, timeout_s)
            except grpc.aio.AioRpcError as exc:
                last = exc
                if exc.code() not in RETRYABLE:
                    break
        assert last is not None
        kind = (
            ErrorKind.TIMEOUT
            if last.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            else ErrorKind.UNAVAILABLE
        )
        message = f"replica at {address} did not answer: {last.code().name} {last.details()}"
        return CommandResult(command_id, error=ReplicaError(kind, message))

    def _client(self, address: str) -> ControlClient:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = self._connect(address, self._security)
        return client

    def _log(self, replica_id: str, command: Command, result: CommandResult) -> CommandResult:
        # A migration is logged by whoever started it, with its report (migrations.py).
        if isinstance(command, (*QUERIES, MigrateOut)) or result.repeated:
            return result
        name = type(command).__name__
        message = name if result.ok else f"{name} failed: {result.error}"
        self._state.events.add(
            EventKind.COMMAND, message, replica_id, command_id=result.command_id, ok=result.ok
        )
        return result

    async def forget(self, address: str) -> None:
        """Drop the connection to a replica that went away."""
        client = self._clients.pop(address, None)
        if client is not None:
            await client.close()

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()
