"""A LoRA adapter in PEFT's format (`adapter_config.json` + `adapter_model.safetensors`), read and
checked against the served model before anything is loaded anywhere.

What is refused, always by name: a pickle (`adapter_model.bin`: loading one can run code), target
modules other than q/k/v/o/gate/up/down, a rank over `max_lora_rank`, PEFT options that change
the math this engine implements (DoRA, biases, fan_in_fan_out, modules_to_save, per-module rank or
alpha patterns, a subset of layers), and weights whose shapes do not fit the model.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from actors.common.config import LORA_MODULES
from actors.models.config import ModelArchConfig

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"

# The projection groups the model fuses, and each module's place in its group (kernels.lora_meta).
GROUPS: dict[str, tuple[str, ...]] = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}
PLACE: dict[str, tuple[str, int]] = {
    m: (g, i) for g, ms in GROUPS.items() for i, m in enumerate(ms)
}

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
_KEY = re.compile(
    r"base_model\.model\.model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight"
)


class AdapterError(ValueError):
    """An adapter that cannot be served; the message starts with the field at fault."""


@dataclass(frozen=True)
class LoRAAdapter:
    """One adapter's weights on the host, per (layer, module): A [r, in], B [out, r]."""

    name: str
    path: str
    rank: int
    scaling: float  # lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora
    modules: tuple[str, ...]
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]
    version: str  # content hash: a changed adapter under the same name is another version

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.weights.values())


def module_dims(arch: ModelArchConfig, module: str) -> tuple[int, int]:
    """(in_dim, out_dim) of a target module in this model."""
    h, i = arch.hidden_size, arch.intermediate_size
    return {
        "q_proj": (h, arch.q_size),
        "k_proj": (h, arch.kv_size),
        "v_proj": (h, arch.kv_size),
        "o_proj": (arch.q_size, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }[module]


def load_adapter(name: str, path: Path, arch: ModelArchConfig, max_rank: int) -> LoRAAdapter:
    """The adapter at `path`, checked against `arch`; AdapterError says what is wrong."""
    if not path.is_dir():
        raise AdapterError(f"lora_path: {str(path)!r} is not a directory")
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not weights_path.is_file():
        if (path / PICKLE_FILE).exists():
            raise AdapterError(
                f"lora_path: {PICKLE_FILE} is a pickle and is refused (it can run code); "
                f"save the adapter as {WEIGHTS_FILE}"
            )
        raise AdapterError(f"lora_path: {WEIGHTS_FILE} is missing")
    if not config_path.is_file():
        raise AdapterError(f"lora_path: {CONFIG_FILE} is missing")
    config_bytes = config_path.read_bytes()
    rank, scaling, modules = _read_config(config_bytes, max_rank)
    weights = _read_weights(weights_path, arch, rank, modules)
    digest = hashlib.sha256(config_bytes)
    digest.update(weights_path.read_bytes())
    return LoRAAdapter(name, str(path), rank, scaling, modules, weights, digest.hexdigest()[:16])


def _read_config(data: bytes, max_rank: int) -> tuple[int, float, tuple[str, ...]]:
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


def _read_weights(
    path: Path, arch: ModelArchConfig, rank: int, modules: tuple[str, ...]
) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
    found: dict[tuple[int, str, str], torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                match = _KEY.fullmatch(key)
                if match is None:
                    raise AdapterError(f"{WEIGHTS_FILE}: tensor {key!r} is not a LoRA weight here")
                layer, module, which = int(match[1]), match[2], match[3]
                if module not in modules or layer >= arch.num_layers:
                    raise AdapterError(
                        f"{WEIGHTS_FILE}: tensor {key!r} is outside the adapter's target modules "
                        f"or the model's {arch.num_layers} layers"
                    )
                found[(layer, module, which)] = f.get_tensor(key)
    except AdapterError:
        raise
    except Exception as exc:  # safetensors' own errors: a truncated or foreign file
        raise AdapterError(f"{WEIGHTS_FILE}: cannot be read ({exc})") from exc
    weights = {}
    for layer in range(arch.num_layers):
        for module in modules:
            a, b = found.get((layer, module, "A")), found.get((layer, module, "B"))
            where = f"{WEIGHTS_FILE}: layers.{layer}.{module}"
            if a is None or b is None:
                raise AdapterError(f"{where}: lora_A or lora_B is missing")
            in_dim, out_dim = module_dims(arch, module)
            if tuple(a.shape) != (rank, in_dim) or tuple(b.shape) != (out_dim, rank):
                raise AdapterError(
                    f"{where}: shapes {tuple(a.shape)} / {tuple(b.shape)} do not fit this model "
                    f"(expected ({rank}, {in_dim}) / ({out_dim}, {rank})): another base model?"
                )
            weights[(layer, module)] = (a, b)
    return weights
