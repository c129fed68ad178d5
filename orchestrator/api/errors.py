"""API errors in the OpenAI shape: {"error": {"message", "type", "param", "code"}}.

The OpenAI API and the admin API answer errors in this one shape; a replica's typed error
(actors.common.errors) becomes an HTTP status through STATUS_OF, defined once here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.common.errors import ErrorKind, ReplicaError

# HTTP status -> OpenAI error type.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_error",
    501: "not_implemented_error",
    503: "service_unavailable",
    504: "timeout_error",
}

# A replica's (or a command's) error kind -> the HTTP status it is answered with.
STATUS_OF = {
    ErrorKind.INVALID_ARGUMENT: 400,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.CONFLICT: 409,
    ErrorKind.OVERLOADED: 429,
    ErrorKind.INTERNAL: 500,
    ErrorKind.UNKNOWN_COMMAND: 501,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.TIMEOUT: 504,
}


@dataclass
class APIError(Exception):
    status: int
    message: str
    param: str | None = None
    code: str | None = None
    retry_after_s: int | None = None  # sent as Retry-After on 429/503
    extra: dict[str, Any] | None = None  # more keys of the error object (e.g. config issues)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "api_error")

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code if self.code is not None else str(self.status),
                **(self.extra or {}),
            }
        }

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else {}


def invalid(field: str, reason: str) -> APIError:
    return APIError(400, f"{field}: {reason}", param=field, code="invalid_value")


def from_value_error(exc: ValueError) -> APIError:
    """Engine-side validation raises ValueError("field: reason"); keep the field as `param`."""
    text = str(exc)
    field, sep, reason = text.partition(": ")
    if sep and field and " " not in field:
        return invalid(field, reason)
    return APIError(400, text, code="invalid_value")


def from_replica_error(error: ReplicaError) -> APIError:
    """The HTTP error for a replica's typed error: 400 names the field, 429/503 may be retried."""
    status = STATUS_OF.get(error.kind, 500)
    if error.kind is ErrorKind.INVALID_ARGUMENT:
        return invalid(error.field or "body", error.message or "invalid value")
    retry = 1 if status in (429, 503) else None
    if status == 500:
        return APIError(500, f"replica error: {error.message}", code="internal_error")
    return APIError(status, error.message, code=error.kind.name.lower(), retry_after_s=retry)


def no_replica(reason: str = "", overloaded: bool = False) -> APIError:
    """429 when every replica's queue is full (back off and retry), 503 when none is up."""
    detail = f": {reason}" if reason else ""
    if overloaded:
        return APIError(429, f"every replica is busy{detail}", code="overloaded", retry_after_s=1)
    return APIError(
        503,
        f"no replica can take the request right now{detail}",
        code="no_replica_available",
        retry_after_s=1,
    )
