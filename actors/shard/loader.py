"""Per-shard weight loading: each rank reads only its slice of every sharded tensor.

The model is built on the meta device, sharded by `actors.shard.sharding.shard_model` (shapes
only), materialized on the rank's device, then filled through `safe_open(...).get_slice`, so a
rank of an 8B model never reads the other ranks' rows or columns from disk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from actors.models.config import ModelArchConfig
from actors.models.llama import LlamaForCausalLM
from actors.models.loader import IGNORED_SUFFIXES, init_dummy_weights, weight_files
from actors.models.registry import model_class
from actors.shard.context import ShardContext
from actors.shard.sharding import column_slices, shard_model

logger = logging.getLogger(__name__)

ROW_PARALLEL_WEIGHTS = (".o_proj.weight", ".down_proj.weight")


@dataclass(frozen=True)
class _Read:
    name: str  # checkpoint tensor
    dim: int  # the dimension the rank's slice is cut along (0 rows, 1 columns)
    start: int | None  # None: the whole tensor
    length: int
    dest: torch.Tensor  # the view of our parameter it lands in


def load_sharded_model(
    model_dir: str | Path,
    arch: ModelArchConfig,
    *,
    dtype: torch.dtype,
    device: torch.device,
    ctx: ShardContext,
    load_format: str = "auto",
    seed: int = 0,
) -> LlamaForCausalLM:
    """Rank `ctx.rank`'s shard of the model, in eval mode on `device`, no grads."""
    if load_format not in ("auto", "safetensors", "dummy"):
        raise ValueError(f"load_format: must be auto, safetensors or dummy, got {load_format!r}")
    files = weight_files(Path(model_dir)) if load_format != "dummy" else {}
    with torch.device("meta"):
        model = model_class(arch)(arch).to(dtype=dtype)
    shard_model(model, ctx)
    model = model.to_empty(device=device)
    model.tie_weights()
    model.eval()
    model.requires_grad_(False)
    with torch.no_grad():
        if load_format == "dummy":
            # Every rank's shards have the same sizes, so replicated tensors draw the same values.
            init_dummy_weights(model, seed)
        else:
            _load_slices(model, files, ctx)
    return model


def _reads(model: LlamaForCausalLM, ctx: ShardContext) -> list[_Read]:
    slices = column_slices(model.config, ctx)
    reads: list[_Read] = []
    for pname, param in model.named_parameters():
        fused = [s for s in model.stacked_params() if s[1] in pname]
        for ckpt_frag, fused_frag, shard_id in fused:
            full_offset, rows, dest_offset = slices[shard_id]
            start = full_offset - model.shard_rows(shard_id)[0]  # inside the unfused tensor
            dest = param.data.narrow(0, dest_offset, rows)
            reads.append(_Read(pname.replace(fused_frag, ckpt_frag), 0, start, rows, dest))
        if fused:
            continue
        if pname.endswith(ROW_PARALLEL_WEIGHTS):
            cols = param.shape[1]
            reads.append(_Read(pname, 1, ctx.rank * cols, cols, param.data))
        else:
            reads.append(_Read(pname, 0, None, 0, param.data))
    return reads


def _check_names(model: LlamaForCausalLM, files: dict[str, Path], reads: list[_Read]) -> None:
    wanted = {r.name for r in reads}
    missing = sorted(wanted - set(files))
    if missing:
        where = next(iter(files.values())).parent if files else "the checkpoint"
        raise ValueError(f"{where}: missing {len(missing)} weight tensor(s): {missing[0]} ...")
    tied_head = model.config.tie_word_embeddings
    unknown = sorted(
        n
        for n in set(files) - wanted
        if not n.endswith(IGNORED_SUFFIXES) and not (tied_head and n == "lm_head.weight")
    )
    if unknown:
        raise ValueError(
            f"{files[unknown[0]]}: tensor {unknown[0]!r} is not a parameter of "
            f"{model.config.architecture}"
        )


def _load_slices(model: LlamaForCausalLM, files: dict[str, Path], ctx: ShardContext) -> None:
    reads = _reads(model, ctx)
    _check_names(model, files, reads)
    by_file: dict[Path, list[_Read]] = {}
    for read in reads:
        by_file.setdefault(files[read.name], []).append(read)
    for path, file_reads in by_file.items():
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for read in file_reads:
                src = f.get_slice(read.name)
                if read.start is None:
                    tensor = src[:]
                elif read.dim == 0:
                    tensor = src[read.start : read.start + read.length]
                else:
                    tensor = src[:, read.start : read.start + read.length]
                if tuple(tensor.shape) != tuple(read.dest.shape):
                    raise ValueError(
                        f"{path}: tensor {read.name!r} gives rank {ctx.rank} a slice of shape "
                        f"{list(tensor.shape)}, expected {list(read.dest.shape)}"
                    )
                read.dest.copy_(tensor)
    logger.info("rank %d loaded %d tensor slices", ctx.rank, len(reads))
