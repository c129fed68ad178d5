"""ShardParallel: actors/shard's side of the engine's tensor-parallel hook.

The engine must not import this package (actors/shard builds on it), so ModelRunner takes an
`actors.engine.parallel.TensorParallel` and this class fills it in from a ShardContext and the
sharding, loading and all-reduce code here:

    runner = ModelRunner(config, tensor_parallel=ShardParallel(ctx))
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from actors.models.config import ModelArchConfig
from actors.models.llama import LlamaForCausalLM
from actors.models.loader import load_model
from actors.shard.allreduce import build_reducer
from actors.shard.context import ShardContext
from actors.shard.loader import load_sharded_model
from actors.shard.sharding import check_tensor_parallel


@dataclass(frozen=True)
class ShardParallel:
    """Rank `ctx.rank` of `ctx.world_size`, as the runner sees it (a TensorParallel)."""

    ctx: ShardContext

    @property
    def world_size(self) -> int:
        return self.ctx.world_size

    def with_fast_all_reduce(self, device: torch.device, dtype: torch.dtype) -> ShardParallel:
        # A single shard reduces nothing, and a context that already has a reducer keeps it.
        if self.ctx.world_size == 1 or self.ctx.reducer is not None:
            return self
        reducer = build_reducer(self.ctx.group, device, dtype)  # collective: every rank, once
        return ShardParallel(replace(self.ctx, reducer=reducer))

    def check(self, arch: ModelArchConfig) -> None:
        check_tensor_parallel(arch, self.ctx.world_size)

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
        if self.ctx.world_size == 1:  # the whole model: the plain loader, no sharding pass
            return load_model(
                model_dir, arch, dtype=dtype, device=device, load_format=load_format, seed=seed
            )
        return load_sharded_model(
            model_dir,
            arch,
            dtype=dtype,
            device=device,
            ctx=self.ctx,
            load_format=load_format,
            seed=seed,
        )

    def agree_min(self, value: int, device: torch.device) -> int:
        return self.ctx.agree_min(value, device)
