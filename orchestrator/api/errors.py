"""API errors in the OpenAI shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# HTTP status -> OpenAI error type.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_error",
    503: "service_unavailable",
}


@dataclass
class APIError(Exception):
    status: int
    message: str
    param: str | None = None
    code: str | None = None
    retry_after_s: int | None = None  # sent as Retry-After on 429/503

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


def from_replica_error(error: str) -> APIError:
    """Map GenerateDelta.error to an API error.

    "invalid:<field>:<reason>" is a validation error (400); "overloaded:<reason>" means the
    replica's queue is full (429, retry); anything else is a real fault on the replica (500).
    """
    kind, _, rest = error.partition(":")
    if kind == "invalid":
        field, _, reason = rest.partition(":")
        return invalid(field or "body", reason or "invalid value")
    if kind == "overloaded":
        return APIError(429, f"server busy: {rest or 'queue full'}", retry_after_s=1)
    return APIError(500, f"replica error: {error}", code="internal_error")


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
