"""ConfigError and the translation of pydantic errors into `FILE:LINE: key.path: why` lines."""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

Issue = tuple[str, str]  # (dotted key path, reason)


class ConfigError(ValueError):
    """A deployment file problem; each line names the file, the key path and why."""

    def __init__(
        self,
        source: str,
        issues: Sequence[Issue],
        text: str | None = None,
        line: int | None = None,
    ) -> None:
        self.source = source
        self.issues = tuple(issues)
        lines = [_format(source, key, reason, line, text) for key, reason in self.issues]
        super().__init__("\n".join(lines))

    @property
    def key(self) -> str:
        """The key path of the first issue ("" for whole-file problems)."""
        return self.issues[0][0] if self.issues else ""


def _format(source: str, key: str, reason: str, line: int | None, text: str | None) -> str:
    if line is None and text is not None and key:
        line = key_line(text, key)
    where = f"{source}:{line}" if line is not None else source
    return f"{where}: {key}: {reason}" if key else f"{where}: {reason}"


def key_line(text: str, key: str) -> int | None:
    """1-based line of the deepest part of dotted `key` present in the YAML `text`."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line = None
    for part in _split_key(key):
        if isinstance(node, yaml.MappingNode):
            match = next((kv for kv in node.value if kv[0].value == part), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _split_key(key: str) -> list[str | int]:
    parts: list[str | int] = []
    for piece in key.split("."):
        name, _, index = piece.partition("[")
        parts.append(name)
        if index:
            parts.append(int(index.rstrip("]")))
    return parts


def join_loc(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def pydantic_issues(exc: ValidationError, root: type[BaseModel]) -> list[Issue]:
    issues = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        issues.append((join_loc(loc), _reason(err, loc, root)))
    return issues


def _reason(err: Any, loc: tuple[str | int, ...], root: type[BaseModel]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(root, loc[:-1])
        return f"unknown key (allowed: {', '.join(allowed)})" if allowed else "unknown key"
    if kind == "missing":
        return "required key is missing"
    msg = _plain(kind, err.get("ctx") or {}) or str(err["msg"]).removeprefix("Value error, ")
    value = err.get("input")
    if kind == "value_error":
        return msg
    if isinstance(value, (dict, list)):
        return f"{msg} (got a {'mapping' if isinstance(value, dict) else 'list'})"
    return f"{msg} (got {value!r})"


_BOUNDS = {
    "greater_than_equal": ">=",
    "greater_than": ">",
    "less_than_equal": "<=",
    "less_than": "<",
}
_TYPES = {
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping of keys",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
}


def _plain(kind: str, ctx: dict[str, Any]) -> str | None:
    """Short "must be ..." wording for the common pydantic error types; None keeps pydantic's."""
    if kind in _BOUNDS:
        (bound,) = (v for k, v in ctx.items() if k in ("ge", "gt", "le", "lt"))
        return f"must be {_BOUNDS[kind]} {bound}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}"
    if kind == "string_too_short":
        return "must not be empty"
    return _TYPES.get(kind)


def _allowed_keys(root: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return []
        model = _model_of(model.model_fields[part].annotation)
    return list(model.model_fields) if model is not None else []


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None
