"""A LoRA adapter in PEFT's format (`adapter_config.json` + `adapter_model.safetensors`), read and
checked against the served model before anything is loaded anywhere.

What is refused, always by name: a pickle (`adapter_model.bin`: loading one can run code), target
modules other than q/k/v/o/gate/up/down, a rank over `max_lora_rank`, PEFT options that change
the math this engine implements (DoRA, biases, fan_in_fan_out, modules_to_save, per-module rank or
alpha patterns, a subset of layers), and weights whose shapes do not fit the model.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from actors.lora.peft_config import (
    WEIGHTS_FILE,
    AdapterError,
    check_adapter_dir,
)
from actors.models.config import ModelArchConfig

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

_KEY = re.compile(
    r"base_model\.model\.model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight"
)


@dataclass(frozen=True)
class LoRAAdapter:
    """One adapter's weights on the host, per (layer, module): A [r, in] and B^T [r, out], both
    contiguous, so a page-in is one flat copy per tensor (a transposed source would be made
    contiguous on the host first, synchronously)."""

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
    config_bytes, rank, scaling, modules = check_adapter_dir(path, max_rank)
    weights_path = path / WEIGHTS_FILE
    _check_size(weights_path, arch, rank, modules)
    weights = _read_weights(weights_path, arch, rank, modules)
    digest = hashlib.sha256(config_bytes)
    digest.update(weights_path.read_bytes())
    return LoRAAdapter(name, str(path), rank, scaling, modules, weights, digest.hexdigest()[:16])


# A safetensors header (tensor names, dtypes, shapes, offsets) is far below this for any adapter.
HEADER_ALLOWANCE = 1 << 20


def _check_size(path: Path, arch: ModelArchConfig, rank: int, modules: tuple[str, ...]) -> None:
    """Refuse a weights file larger than an adapter of this rank can be for this model, before
    reading it: at most 8 bytes per parameter (float64) plus the header."""
    params = sum(rank * sum(module_dims(arch, m)) for m in modules) * arch.num_layers
    bound = 8 * params + HEADER_ALLOWANCE
    size = path.stat().st_size
    if size > bound:
        raise AdapterError(
            f"{WEIGHTS_FILE}: {size} bytes, more than a rank-{rank} adapter of this model can "
            f"hold ({bound} at most)"
        )


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
            weights[(layer, module)] = (a.contiguous(), b.t().contiguous())
    return weights
