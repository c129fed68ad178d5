"""The hook through which a ModelRunner becomes one rank of a tensor-parallel replica.

The engine runs one model on one device and knows nothing of how a model is split: that lives in
actors/shard, which builds on the engine (its ShardedRunner is a ModelRunner). So the dependency
points one way, the runner asks this protocol for the few things that differ on a rank, and
actors/shard implements it (actors/shard/parallel.py). A runner given no hook is a whole model on
one device. The import-linter contract "the engine imports no tensor-parallel code" keeps it so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from actors.models.config import ModelArchConfig
from actors.models.llama import LlamaForCausalLM


class TensorParallel(Protocol):
    """One rank of `world_size`; the runner calls it in this order on every rank.

    `with_fast_all_reduce`, `load_model` and `agree_min` may run collectives, so every rank of
    the replica must construct its runner with the same config at the same time.
    """

    @property
    def world_size(self) -> int:
        """The number of ranks: each holds num_kv_heads / world_size heads in its KV cache."""
        ...

    def with_fast_all_reduce(self, device: torch.device, dtype: torch.dtype) -> TensorParallel:
        """This rank's hook for `device` and `dtype`, with a faster all-reduce where one sets up.

        Called before `load_model`: the model's reducing layers keep the hook they were built
        with, so the one returned here is the one whose all-reduce runs in every step.
        """
        ...

    def check(self, arch: ModelArchConfig) -> None:
        """Raises ValueError (naming tensor_parallel_size) when `arch` cannot split this way."""
        ...

    def load_model(
        self,
        model_dir: Path,
        arch: ModelArchConfig,
        *,
        dtype: torch.dtype,
        device: torch.device,
        load_format: str,
        seed: int,
    ) -> LlamaForCausalLM:
        """This rank's slice of the model, in eval mode on `device`, no grads."""
        ...

    def agree_min(self, value: int, device: torch.device) -> int:
        """The smallest `value` over the ranks: they must all size their KV cache the same."""
        ...
