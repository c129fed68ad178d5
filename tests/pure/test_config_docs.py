"""docs/configuration.md documents every key of the deployment schema, and no key the schema
does not have: the table under "## Sections" is compared with the pydantic models."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

from pydantic import BaseModel

from orchestrator.config.schema import DeploymentConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def schema_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        hint = field.annotation
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if isinstance(hint, type) and issubclass(hint, BaseModel):
            keys |= schema_keys(hint, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def documented_keys() -> set[str]:
    text = DOC.read_text()
    section = text.split("## Sections", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_.]+)` \|", section, re.M))


def test_every_key_is_documented_and_no_documented_key_is_stale() -> None:
    keys, documented = schema_keys(DeploymentConfig), documented_keys()
    assert not keys - documented, f"undocumented in {DOC.name}: {sorted(keys - documented)}"
    assert not documented - keys, f"stale in {DOC.name}: {sorted(documented - keys)}"
