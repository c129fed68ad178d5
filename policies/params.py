"""Typed policy parameters: a YAML mapping in, a frozen dataclass out, or an error naming the key.

Each policy declares its parameters as a frozen dataclass whose fields carry defaults; the
annotations (int, float, bool, str, `X | None`, dict[str, float]) drive the checks here, so a
policy adds a parameter by adding a field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

P = TypeVar("P")


class PolicyParamError(ValueError):
    """A bad policy parameter; `key` is its path below the policy's `params` mapping."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"params.{key}: {reason}" if key else f"params: {reason}")
        self.key = key
        self.reason = reason


def parse_params(cls: type[P], params: Mapping[str, Any] | None, policy: str) -> P:
    """Build `cls` from `params`, refusing unknown keys and values of the wrong type."""
    params = {} if params is None else params
    if not isinstance(params, Mapping):
        raise PolicyParamError("", f"must be a mapping, got {type(params).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in params.items():
        if key not in known:
            raise PolicyParamError(
                str(key), f"unknown parameter for policy {policy!r} (known: {', '.join(known)})"
            )
        values[key] = _check_type(str(key), value, hints[key])
    try:
        return cls(**values)
    except ValueError as exc:
        if isinstance(exc, PolicyParamError):
            raise
        key, _, reason = str(exc).partition(": ")
        raise PolicyParamError(key, reason or str(exc)) from None


def _check_type(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_type(key, value, inner)
    if origin is dict:
        return _check_mapping(key, value, args[1])
    if hint is bool:
        if not isinstance(value, bool):
            raise PolicyParamError(key, f"must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyParamError(key, f"must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PolicyParamError(key, f"must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise PolicyParamError(key, f"must be a string, got {value!r}")
        return value
    raise PolicyParamError(key, f"unsupported parameter type {hint!r}")


def _check_mapping(key: str, value: Any, value_hint: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyParamError(key, f"must be a mapping, got {value!r}")
    return {str(k): _check_type(f"{key}.{k}", v, value_hint) for k, v in value.items()}


@dataclass(frozen=True)
class CommonParams:
    """Parameters every dispatch policy takes."""

    # Requests a replica may queue beyond its free running slots; the deployment YAML fills it
    # from server.max_queue_per_replica.
    max_queue: int = 64
    # An adapter request goes to the replicas holding its adapter in device memory while the
    # least loaded of them is within this much load (running + queued, as a fraction of running
    # slots) of the least loaded replica serving it: traffic stays where the adapter is, so
    # slots are not paged back and forth, unless that replica is this much busier.
    adapter_affinity_slack: float = 0.5

    def __post_init__(self) -> None:
        require(self.max_queue >= 1, "max_queue", f"must be >= 1, got {self.max_queue}")
        require(
            self.adapter_affinity_slack >= 0,
            "adapter_affinity_slack",
            f"must be >= 0, got {self.adapter_affinity_slack}",
        )


def require(condition: bool, key: str, reason: str) -> None:
    """Refuse parameter `key` with `reason` unless `condition` holds (for __post_init__ checks)."""
    if not condition:
        raise PolicyParamError(key, reason)
