"""Who this shard is inside its replica: rank, world size and the process group it reduces over."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

CONTROL_TIMEOUT = timedelta(days=365)  # an idle replica sends no steps for as long as it likes


@dataclass(frozen=True)
class ShardContext:
    """Rank `rank` of `world_size` tensor-parallel shards; `group` None means the default group."""

    rank: int
    world_size: int
    group: dist.ProcessGroup | None = None
    # Step descriptions travel over their own gloo group even when the tensors reduce over NCCL
    # (a broadcast through a GPU would add a copy and a sync to every step). None: `group`.
    cpu_group: dist.ProcessGroup | None = None
    # A faster all-reduce for the inputs it accepts (returns None for the others), e.g.
    # actors/shard/allreduce.py's symmetric-memory one-shot on GPU; None: the group's collective.
    reducer: Callable[[torch.Tensor], torch.Tensor | None] | None = None

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"tensor_parallel_size: must be >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank: must be in [0, {self.world_size}), got {self.rank}")

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """`x` summed over the shards: `x` itself reduced in place, or a new tensor."""
        if self.world_size == 1:
            return x
        if self.reducer is not None:
            out = self.reducer(x)
            if out is not None:
                return out
        dist.all_reduce(x, group=self.group)
        return x

    def agree_min(self, value: int, device: torch.device) -> int:
        """The smallest `value` over all shards: every rank must size its KV cache the same."""
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.group)
        return int(t.item())


def init_shard_group(
    backend: str, init_method: str, rank: int, world_size: int, timeout_s: float = 300.0
) -> ShardContext:
    """Joins the replica's default process group (one process per shard)."""
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            init_method=init_method,
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
        )
    # Workers wait on this group between steps for as long as the replica stays idle: it must
    # not time out like the group of the all-reduces (whose timeout catches a hung peer).
    cpu_group = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    logger.info("shard %d/%d joined %s over %s", rank, world_size, init_method, backend)
    return ShardContext(rank=rank, world_size=world_size, cpu_group=cpu_group)


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"
