"""Build a Llama-family model from a Hugging Face checkpoint directory (or dummy weights).

The model is built on the meta device and materialized straight on the target device, so an
8B-class model never passes through a CPU fp32 copy. Weights are read one tensor at a time with
`safetensors.safe_open` (a tensor-parallel pass can read only its rows through `get_slice`).
Every problem raises one ValueError naming the file and what is wrong.

dtype "auto": float32 on CPU (CPU bf16/fp16 matmuls are slow and less exact; the CPU path is for
tests and the embedded model); on GPU the checkpoint's `torch_dtype`, float32 when it has none
(what transformers does too).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from actors.models.config import ModelArchConfig
from actors.models.llama import LlamaForCausalLM
from actors.models.registry import model_class

logger = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
# Checkpoint tensors that carry nothing we need (old Llama checkpoints saved RoPE tables).
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


@dataclass(frozen=True)
class _Target:
    param: str  # our parameter's name
    offset: int | None  # row offset inside a fused parameter, None when not fused
    rows: int | None


def resolve_dtype(requested: str, arch: ModelArchConfig, device: torch.device) -> torch.dtype:
    if requested == "auto":
        name = "float32" if device.type == "cpu" else (arch.torch_dtype or "float32")
    else:
        name = requested
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"dtype: must be auto, float32, bfloat16 or float16, got {requested!r}")
    return dtypes[name]


def load_model(
    model_dir: str | Path,
    arch: ModelArchConfig,
    *,
    dtype: torch.dtype,
    device: torch.device,
    load_format: str = "auto",
    seed: int = 0,
) -> LlamaForCausalLM:
    """Returns the model in eval mode on `device`, weights in `dtype`, no grads."""
    if load_format not in ("auto", "safetensors", "dummy"):
        raise ValueError(f"load_format: must be auto, safetensors or dummy, got {load_format!r}")
    if load_format != "dummy":
        files = weight_files(Path(model_dir))  # fail on a bad directory before allocating
    model = build_empty_model(arch, dtype, device)
    with torch.no_grad():
        if load_format == "dummy":
            init_dummy_weights(model, seed)
        else:
            load_weights(model, files)
    return model


def build_empty_model(
    arch: ModelArchConfig, dtype: torch.dtype, device: torch.device
) -> LlamaForCausalLM:
    cls = model_class(arch)
    with torch.device("meta"):
        model = cls(arch).to(dtype=dtype)
    model = model.to_empty(device=device)
    model.tie_weights()  # to_empty may have split the shared parameter
    model.eval()
    model.requires_grad_(False)
    return model


def init_dummy_weights(model: LlamaForCausalLM, seed: int) -> None:
    """Deterministic random weights, drawn on the model's device (fast for 8B shapes on GPU)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        else:
            # Small enough that 32 layers of bf16 residual adds stay finite.
            param.uniform_(-0.02, 0.02, generator=gen)


def weight_files(model_dir: Path) -> dict[str, Path]:
    """Checkpoint tensor name -> the .safetensors file that holds it."""
    if not model_dir.is_dir():
        raise ValueError(f"model: directory {str(model_dir)!r} does not exist")
    index = model_dir / INDEX_FILE
    if index.is_file():
        return _from_index(index)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        other = sorted(p.name for p in model_dir.glob("*.bin"))
        hint = f" (found {', '.join(other)}: only safetensors is supported)" if other else ""
        raise ValueError(f"{model_dir}: no *.safetensors weight files{hint}")
    mapping: dict[str, Path] = {}
    for path in files:
        for name in _keys(path):
            if name in mapping:
                raise ValueError(f"{path}: tensor {name!r} is also in {mapping[name].name}")
            mapping[name] = path
    return mapping


def _from_index(index: Path) -> dict[str, Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{index}: not a valid safetensors index ({exc!r})") from exc
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index}: 'weight_map' must be an object")
    mapping = {name: index.parent / str(fname) for name, fname in weight_map.items()}
    for path in sorted(set(mapping.values())):
        if not path.is_file():
            raise ValueError(f"{index}: lists {path.name}, which does not exist")
    return mapping


def _keys(path: Path) -> list[str]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return list(f.keys())
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc


def _targets(model: LlamaForCausalLM) -> dict[str, _Target]:
    """Checkpoint name -> where it lands in our (fused) parameters."""
    targets: dict[str, _Target] = {}
    for pname, _ in model.named_parameters():
        fused = [s for s in model.stacked_params() if s[1] in pname]
        if not fused:
            targets[pname] = _Target(pname, None, None)
        for ckpt_frag, fused_frag, shard in fused:
            offset, rows = model.shard_rows(shard)
            targets[pname.replace(fused_frag, ckpt_frag)] = _Target(pname, offset, rows)
    return targets


def _ignored(name: str, model: LlamaForCausalLM) -> bool:
    if name.endswith(IGNORED_SUFFIXES):
        return True
    # Tied checkpoints sometimes still store the head; it is the embedding by definition.
    return name == "lm_head.weight" and model.config.tie_word_embeddings


def load_weights(model: LlamaForCausalLM, files: dict[str, Path]) -> None:
    targets = _targets(model)
    names = {n for n in files if not _ignored(n, model)}
    unknown = sorted(names - set(targets))
    if unknown:
        name = unknown[0]
        raise ValueError(
            f"{files[name]}: tensor {name!r} is not a parameter of {model.config.architecture} "
            f"({len(unknown)} unknown tensor(s))"
        )
    missing = sorted(set(targets) - names)
    if missing:
        where = next(iter(files.values())).parent if files else "the checkpoint"
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(f"{where}: missing {len(missing)} weight tensor(s): {shown}")
    params = dict(model.named_parameters())
    by_file: dict[Path, list[str]] = {}
    for name in sorted(targets):
        by_file.setdefault(files[name], []).append(name)
    for path, file_names in by_file.items():
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in file_names:
                _copy_tensor(f, path, name, targets[name], params[targets[name].param])
    logger.info("loaded %d tensors from %d file(s)", len(targets), len(by_file))


def _copy_tensor(f: Any, path: Path, name: str, target: _Target, param: torch.Tensor) -> None:
    """`f` is an open safe_open handle (its type is not exported by safetensors)."""
    dest = param.data if target.offset is None else param.data[target.offset :][: target.rows]
    shape = tuple(f.get_slice(name).get_shape())
    if shape != tuple(dest.shape):
        raise ValueError(
            f"{path}: tensor {name!r} has shape {list(shape)}, expected {list(dest.shape)}"
        )
    dest.copy_(f.get_tensor(name))
