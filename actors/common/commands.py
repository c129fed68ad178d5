"""Typed commands the controller sends a replica (gRPC ReplicaControl.Execute), and results.

A command is a frozen dataclass; its protobuf form is the `Command.body` arm named after the class
(Cordon -> `cordon`, ListRequests -> `list_requests`), and its result the `CommandResult.body` arm
named after the result's class, so adding a command is a dataclass, a proto arm and a handler.
Every command travels with an id: the replica applies an id once and answers a repeat with the
first result, so callers retry on the same id without fear.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union, get_args

from actors.common.errors import ReplicaError
from actors.common.migration import MigrationReport, RequestState


@dataclass(frozen=True)
class Cordon:
    """Take no new requests; the running and waiting ones finish."""


@dataclass(frozen=True)
class Uncordon:
    """Take new requests again."""


@dataclass(frozen=True)
class Abort:
    """Abort one request (every choice of it); `found` says whether it was in flight here."""

    request_id: str


@dataclass(frozen=True)
class ListRequests:
    """The replica's running and waiting requests."""


@dataclass(frozen=True)
class MigrateOut:
    """To the source: move a request, KV and all, to the replica at `target_address`; the
    answer (a MigrationReport) comes when the migration has committed or aborted. The
    command id is the migration's id."""

    request_id: str
    target_address: str
    transport: str = ""  # "": the replica's migration.transport; else host | cuda_ipc
    max_stages: int | None = None  # None: the replica's migration.max_stages; 0: one-shot


@dataclass(frozen=True)
class PrepareMigrateIn:
    """To the destination: reserve `num_blocks` KV blocks for a request that is coming."""

    migration_id: str
    request_id: str
    num_blocks: int
    transport: str  # host | cuda_ipc
    source_handle: bytes = b""  # cuda_ipc: how to map the source's KV cache
    adapter_id: str = ""  # the request's LoRA adapter: the destination must serve it


@dataclass(frozen=True)
class PullBlocks:
    """To the destination (cuda_ipc): copy these source blocks into the reservation."""

    migration_id: str
    start: int  # the first block's index within the migration
    source_block_ids: tuple[int, ...]


@dataclass(frozen=True)
class CommitMigrateIn:
    """To the destination: the request's state; it continues there, its KV all in place."""

    migration_id: str
    state: RequestState
    num_blocks: int


@dataclass(frozen=True)
class AbortMigrateIn:
    """To the destination: the migration is off; free its reservation (idempotent)."""

    migration_id: str


@dataclass(frozen=True)
class LoadAdapter:
    """Serve the PEFT LoRA adapter at `path` as `name` (docs/lora.md); the same content again is
    a no-op, other content a new version."""

    name: str
    path: str


@dataclass(frozen=True)
class UnloadAdapter:
    """Refuse new requests for `name` now; its requests in flight finish first."""

    name: str


@dataclass(frozen=True)
class PlaceAdapter:
    """Placement (policies/adapters.py): hold the served adapter `name` in device memory now
    (`resident`), or let it go from there. Refused (conflict) when every slot, or the adapter
    itself, is held by running requests."""

    name: str
    resident: bool


@dataclass(frozen=True)
class ListAdapters:
    """The adapters the replica serves, with where each was loaded from."""


Command = Union[
    Cordon,
    Uncordon,
    Abort,
    ListRequests,
    MigrateOut,
    PrepareMigrateIn,
    PullBlocks,
    CommitMigrateIn,
    AbortMigrateIn,
    LoadAdapter,
    UnloadAdapter,
    ListAdapters,
    PlaceAdapter,
]
COMMANDS: tuple[type, ...] = get_args(Command)  # the Union above is the one list
# Commands that change nothing: a repeat may run again instead of replaying a stored answer.
QUERIES: tuple[type, ...] = (ListRequests, ListAdapters)


@dataclass(frozen=True)
class Done:
    """Applied; nothing more to say."""


@dataclass(frozen=True)
class AbortResult:
    found: bool


@dataclass(frozen=True)
class RequestInfo:
    """One request on a replica, as an operator sees it (its id is the OpenAI response's id)."""

    request_id: str
    state: str  # running | waiting | preempted | swapped
    n: int
    prompt_tokens: int
    output_tokens: int  # over all choices
    kv_blocks: int  # blocks its choices hold
    priority: int
    arrival_time: float  # Unix time it reached the replica
    adapter: str | None = None


@dataclass(frozen=True)
class AdapterInfo:
    """An adapter a replica serves."""

    name: str
    version: str  # content hash
    rank: int
    modules: tuple[str, ...]
    path: str = ""  # where it was loaded from


@dataclass(frozen=True)
class AdapterList:
    adapters: tuple[AdapterInfo, ...]


@dataclass(frozen=True)
class RequestList:
    requests: tuple[RequestInfo, ...]


@dataclass(frozen=True)
class Reservation:
    num_blocks: int  # blocks the destination holds for the migration now


@dataclass(frozen=True)
class BlockChunk:
    """The host transport's payload: `count` blocks' KV, as bytes of `dtype`, C order
    [layers, 2, count, block_size, kv_heads, head_dim] (ReplicaControl.PushBlocks)."""

    migration_id: str
    start: int
    count: int
    data: bytes
    dtype: str


Result = Union[
    Done, AbortResult, RequestList, Reservation, MigrationReport, AdapterInfo, AdapterList
]
RESULTS: tuple[type, ...] = get_args(Result)


@dataclass(frozen=True)
class CommandResult:
    """A replica's answer: `error` None means the command was applied and `body` says how."""

    command_id: str
    body: Result | None = None
    error: ReplicaError | None = None
    repeated: bool = False  # the id was seen before: this is the first answer, not re-applied

    @property
    def ok(self) -> bool:
        return self.error is None


def arm_name(cls: type) -> str:
    """The proto oneof arm of a command or result class: ListRequests -> list_requests."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()
