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
from typing import Union

from actors.common.errors import ReplicaError


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


Command = Union[Cordon, Uncordon, Abort, ListRequests]
COMMANDS: tuple[type, ...] = (Cordon, Uncordon, Abort, ListRequests)
# Commands that change nothing: a repeat may run again instead of replaying a stored answer.
QUERIES: tuple[type, ...] = (ListRequests,)


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
class RequestList:
    requests: tuple[RequestInfo, ...]


Result = Union[Done, AbortResult, RequestList]
RESULTS: tuple[type, ...] = (Done, AbortResult, RequestList)


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
