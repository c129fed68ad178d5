"""Generic conversion between frozen dataclasses and the protobuf messages that mirror them.

A plain type and its message share field names, so one function per direction covers every such
pair: adding a field to both is the whole change (no per-field copying to keep in step). What a
field holds is read from the dataclass's type hints, once per class:

    int / float / str / bool          <-> the scalar field
    X | None                          <-> a proto3 `optional` field (or a message field) unset
    tuple[X, ...] / frozenset[X]      <-> a repeated field (frozensets travel sorted)
    a dataclass                       <-> a message field (recursively)
    an enum.Enum                      <-> an enum field: member NAME <-> PREFIX_NAME (enum_prefix)

Fields the message has and the dataclass lacks keep their proto default; the reverse is an
error; check_mirror lists every disagreement (tests/pure/test_wire_schema.py runs it).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
import types
import typing
from typing import Any, TypeVar

from google.protobuf.message import Message

T = TypeVar("T")

_SCALARS = (int, float, str, bool, bytes)


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    kind: str  # scalar | enum | message | repeated_scalar | repeated_message | map
    inner: Any = None  # the element type (a dataclass or enum class) where there is one
    optional: bool = False
    container: type = tuple  # what a repeated field becomes: tuple or frozenset


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], True
    return hint, False


def _describe(hint: Any, name: str, owner: type) -> _Field:
    hint, optional = _unwrap_optional(hint)
    origin = typing.get_origin(hint)
    if origin in (tuple, frozenset):
        inner = typing.get_args(hint)[0]
        kind = "repeated_message" if dataclasses.is_dataclass(inner) else "repeated_scalar"
        return _Field(name, kind, inner, optional, origin)
    if origin is dict:
        return _Field(name, "map", None, optional)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _Field(name, "enum", hint, optional)
    if dataclasses.is_dataclass(hint):
        return _Field(name, "message", hint, optional)
    if hint in _SCALARS:
        return _Field(name, "scalar", hint, optional)
    raise TypeError(f"{owner.__name__}.{name}: no protobuf mapping for {hint!r}")


@functools.cache
def _fields(cls: type) -> tuple[_Field, ...]:
    hints = typing.get_type_hints(cls)
    return tuple(_describe(hints[f.name], f.name, cls) for f in dataclasses.fields(cls))


@functools.cache
def _own_fields(cls: type) -> tuple[_Field, ...]:
    """The fields `cls` declares itself (not those a dataclass base declares)."""
    own = cls.__dict__.get("__annotations__", {})
    return tuple(f for f in _fields(cls) if f.name in own)


def enum_prefix(proto_enum_name: str) -> str:
    """The prefix of a proto enum's value names: ReplicaState -> "REPLICA_STATE_" (buf style)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", proto_enum_name).upper() + "_"


@functools.cache
def _enum_maps(enum_cls: type[enum.Enum], descriptor: Any) -> tuple[dict[Any, int], dict[int, Any]]:
    """Python member <-> proto number, matching each member's name to PREFIX + name."""
    prefix = enum_prefix(descriptor.name)
    to_num: dict[Any, int] = {}
    for member in enum_cls:
        value = descriptor.values_by_name.get(prefix + member.name)
        if value is None:
            raise TypeError(f"{enum_cls.__name__}.{member.name}: no {prefix}{member.name} in proto")
        to_num[member] = value.number
    return to_num, {v: m for m, v in to_num.items()}


def _enum_map(msg: Message, f: _Field) -> tuple[dict[Any, int], dict[int, Any]]:
    return _enum_maps(f.inner, msg.DESCRIPTOR.fields_by_name[f.name].enum_type)


def to_pb(obj: Any, msg: Message, only: type | None = None) -> Message:
    """Fill `msg` (a fresh message) from the dataclass `obj`; returns `msg`. `only`: just the
    fields that class declares itself (a subclass's own fields, or a base's on a subclass)."""
    for f in _own_fields(only) if only is not None else _fields(type(obj)):
        value = getattr(obj, f.name)
        if value is None:
            if not f.optional:
                raise ValueError(f"{type(obj).__name__}.{f.name}: None for a required field")
            continue
        if f.kind == "scalar":
            setattr(msg, f.name, value)
        elif f.kind == "enum":
            setattr(msg, f.name, _enum_map(msg, f)[0][value])
        elif f.kind == "message":
            sub = getattr(msg, f.name)
            sub.SetInParent()  # present even when every field is a default (HasField is True)
            to_pb(value, sub)
        elif f.kind == "repeated_scalar":
            getattr(msg, f.name).extend(sorted(value) if f.container is frozenset else value)
        elif f.kind == "repeated_message":
            target = getattr(msg, f.name)
            for item in value:
                to_pb(item, target.add())
        else:  # map
            getattr(msg, f.name).update(value)
    return msg


def from_pb(msg: Message, cls: type[T]) -> T:
    """The dataclass `cls` from `msg`."""
    return cls(**fields_from_pb(msg, cls))


def fields_from_pb(msg: Message, cls: type, only: type | None = None) -> dict[str, Any]:
    """The keyword arguments of `cls` that `msg` holds; `only`: those that class declares."""
    out: dict[str, Any] = {}
    for f in _own_fields(only) if only is not None else _fields(cls):
        if f.optional and f.kind in ("scalar", "enum", "message") and not msg.HasField(f.name):
            out[f.name] = None
            continue
        value = getattr(msg, f.name)
        if f.kind == "scalar":
            out[f.name] = value
        elif f.kind == "enum":
            out[f.name] = _enum_map(msg, f)[1][value]
        elif f.kind == "message":
            out[f.name] = from_pb(value, f.inner)
        elif f.kind == "repeated_scalar":
            out[f.name] = f.container(value)
        elif f.kind == "repeated_message":
            out[f.name] = f.container(from_pb(item, f.inner) for item in value)
        else:  # map
            out[f.name] = dict(value)
    return out


def check_mirror(cls: type, msg_cls: type[Message]) -> list[str]:
    """Where `cls` and `msg_cls` disagree: fields only the dataclass has, or of another kind."""
    problems: list[str] = []
    proto_fields = msg_cls.DESCRIPTOR.fields_by_name
    for f in _fields(cls):
        pf = proto_fields.get(f.name)
        where = f"{cls.__name__}.{f.name}"
        if pf is None:
            problems.append(f"{where}: missing in {msg_cls.__name__}")
            continue
        is_map = pf.message_type is not None and pf.message_type.GetOptions().map_entry
        if (f.kind == "map") != is_map:
            problems.append(f"{where}: a map in one, not the other")
        elif not is_map and pf.is_repeated != f.kind.startswith("repeated"):
            problems.append(f"{where}: repeated in one, not the other")
        elif f.kind in ("message", "repeated_message"):
            if pf.message_type is None:
                problems.append(f"{where}: a message in the dataclass, a scalar in the proto")
            else:
                sub = _message_class(msg_cls, f.name)
                problems += check_mirror(f.inner, sub)
        elif f.kind == "enum":
            if pf.enum_type is None:
                problems.append(f"{where}: an enum in the dataclass only")
            else:
                try:
                    _enum_maps(f.inner, pf.enum_type)
                except TypeError as exc:
                    problems.append(f"{where}: {exc}")
    return problems


def _message_class(msg_cls: type[Message], name: str) -> type[Message]:
    field = getattr(msg_cls(), name)
    return type(field.add()) if hasattr(field, "add") else type(field)
