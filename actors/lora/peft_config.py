"""PEFT adapter directories checked without torch: the files, and `adapter_config.json` against
what fleetlm serves. Shared by the replica (actors/lora/adapter.py, which then reads the weights)
and the orchestrator side (`fleetlm config check`, the admin API), so a bad adapter is refused,
by name, before any replica is asked."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from actors.common.config import LORA_MODULES

# An adapter's name (the OpenAI `model` suffix): the one definition, for the replica's registry,
# the controller's catalog and the deployment YAML.
ADAPTER_NAME = r"[A-Za-z0-9][A-Za-z0-9._\-/]{0,127}"
ADAPTER_NAME_RULE = "1-128 letters, digits, '.', '_', '-' or '/'"

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"
MAX_CONFIG_BYTES = 1 << 20  # adapter_config.json is a few hundred bytes; more is not a config

# PEFT options whose non-default values change the math: (key, the default it must have).
_MUST_BE_DEFAULT: tuple[tuple[str, Any], ...] = (
    ("bias", "none"),
    ("use_dora", False),
    ("fan_in_fan_out", False),
    ("modules_to_save", None),
    ("rank_pattern", {}),
    ("alpha_pattern", {}),
    ("layers_to_transform", None),
)


class AdapterError(ValueError):
    """An adapter that cannot be served; the message starts with the field at fault."""


def check_adapter_dir(path: Path, max_rank: int) -> tuple[bytes, int, float, tuple[str, ...]]:
    """The adapter directory's config bytes, rank, scaling and target modules; AdapterError
    (naming the field) when the files or the config cannot be served."""
    if not path.is_dir():
        raise AdapterError(f"lora_path: {str(path)!r} is not a directory")
    if not (path / WEIGHTS_FILE).is_file():
        if (path / PICKLE_FILE).exists():
            raise AdapterError(
                f"lora_path: {PICKLE_FILE} is a pickle and is refused (it can run code); "
                f"save the adapter as {WEIGHTS_FILE}"
            )
        raise AdapterError(f"lora_path: {WEIGHTS_FILE} is missing")
    if not (path / CONFIG_FILE).is_file():
        raise AdapterError(f"lora_path: {CONFIG_FILE} is missing")
    size = (path / CONFIG_FILE).stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise AdapterError(f"{CONFIG_FILE}: {size} bytes, over the {MAX_CONFIG_BYTES} allowed")
    data = (path / CONFIG_FILE).read_bytes()
    return (data, *read_config(data, max_rank))


def read_config(data: bytes, max_rank: int) -> tuple[int, float, tuple[str, ...]]:
    try:
        cfg = json.loads(data)
    except ValueError as exc:
        raise AdapterError(f"{CONFIG_FILE}: not JSON ({exc})") from exc
    if not isinstance(cfg, dict):
        raise AdapterError(f"{CONFIG_FILE}: must be a JSON object")
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"peft_type: {cfg['peft_type']!r} is not supported (LORA only)")
    rank = cfg.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise AdapterError(f"r: must be a positive integer, got {rank!r}")
    if rank > max_rank:
        raise AdapterError(f"r: rank {rank} is over max_lora_rank {max_rank}")
    alpha = cfg.get("lora_alpha", 8)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise AdapterError(f"lora_alpha: must be a number, got {alpha!r}")
    for key, default in _MUST_BE_DEFAULT:
        value = cfg.get(key, default)
        if value != default and not (default is None and value in ([], {})):
            raise AdapterError(f"{key}: {value!r} is not supported (only {default!r})")
    targets = cfg.get("target_modules")
    if isinstance(targets, str) or not isinstance(targets, list) or not targets:
        raise AdapterError(
            f"target_modules: must be a list of module names, got {targets!r} "
            f"(supported: {', '.join(LORA_MODULES)})"
        )
    unknown = [t for t in targets if t not in LORA_MODULES]
    if unknown:
        raise AdapterError(
            f"target_modules: {unknown} not supported (supported: {', '.join(LORA_MODULES)})"
        )
    scaling = alpha / (math.sqrt(rank) if cfg.get("use_rslora") else rank)
    return rank, float(scaling), tuple(m for m in LORA_MODULES if m in targets)
