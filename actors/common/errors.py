"""Typed errors of the token and control planes: a kind from one enum, the field, a message.

`ErrorKind` mirrors protos/common.proto's ErrorKind member for member (protos/convert.py maps
them by name; tests/pure/test_wire_schema.py checks both lists agree). Callers branch on the kind
(orchestrator/api/errors.py turns it into an HTTP status), never on message text.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ErrorKind(enum.Enum):
    NONE = 0
    INVALID_ARGUMENT = 1  # a field is wrong; `field` names it
    NOT_FOUND = 2  # no such request, replica or adapter
    CONFLICT = 3  # the target's state forbids it right now
    OVERLOADED = 4  # queue full: retry later
    UNAVAILABLE = 5  # this replica takes no new work (cordoned, stopping): go elsewhere
    INTERNAL = 6  # a fault on the replica
    UNKNOWN_COMMAND = 7  # the replica does not know this command (an older version)
    TIMEOUT = 8  # no answer in time


@dataclass(frozen=True)
class ReplicaError:
    """Why a replica refused or failed a request or a command."""

    kind: ErrorKind
    message: str
    field: str = ""  # the field an INVALID_ARGUMENT names
    # Ends every choice of a request (a request-level failure), not only the choice it is on.
    whole_request: bool = False

    def __str__(self) -> str:
        return f"{self.kind.name.lower()}: {self.message}"

    @classmethod
    def from_value_error(cls, exc: ValueError, whole_request: bool = True) -> ReplicaError:
        """Validation raises ValueError("field: reason"); the field becomes `field`."""
        text = str(exc)
        name, sep, reason = text.partition(": ")
        if sep and name and " " not in name:
            return cls(ErrorKind.INVALID_ARGUMENT, reason, name, whole_request)
        return cls(ErrorKind.INVALID_ARGUMENT, text, "request", whole_request)

    @classmethod
    def internal(cls, exc: BaseException, whole_request: bool = True) -> ReplicaError:
        return cls(ErrorKind.INTERNAL, f"{type(exc).__name__}: {exc}", "", whole_request)


class CommandRefused(Exception):
    """A command handler's typed refusal: becomes the command's `error` (not a fault)."""

    def __init__(self, kind: ErrorKind, message: str, field: str = "") -> None:
        super().__init__(message)
        self.error = ReplicaError(kind, message, field)
