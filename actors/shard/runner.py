"""Tensor-parallel model runners: rank 0 drives, the other ranks follow its broadcasts.

    rank 0:  ShardedRunner.execute(sched_out)  ->  broadcast StepMessage, run its own slice
    rank k:  follow(runner)                    ->  loop: receive StepMessage, run its slice

Every rank runs the same forward on its slice (the row-parallel layers all-reduce inside it);
only rank 0's logits are used. One broadcast per step carries the whole batch description, so a
step costs no Ray call per rank. `close()` sends the stop message that ends each worker's loop.
KV export/import (the migration seam) gathers/scatters each rank's heads; like `execute`, call
them from the engine's thread only: every collective must run in the same order on all ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.distributed as dist

from actors.engine.config import EngineConfig
from actors.engine.model_runner import ModelRunner
from actors.engine.outputs import SchedulerOutput
from actors.shard.context import ShardContext
from actors.shard.step import StepMessage

logger = logging.getLogger(__name__)


def _broadcast(msg: StepMessage | None, ctx: ShardContext) -> StepMessage:
    box: list[StepMessage | None] = [msg]
    group = ctx.cpu_group if ctx.cpu_group is not None else ctx.group  # a gloo group: CPU only
    dist.broadcast_object_list(box, src=0, group=group)
    received = box[0]
    assert received is not None  # rank 0 always sends a message
    return received


class ShardedRunner(ModelRunner):
    """Rank 0's runner: each step is broadcast to the other shards before its own forward."""

    def __init__(
        self, config: EngineConfig, ctx: ShardContext, *, use_cuda_graphs: bool | None = None
    ) -> None:
        if ctx.rank != 0:
            raise ValueError(f"rank: ShardedRunner runs on rank 0, got rank {ctx.rank}")
        super().__init__(config, use_cuda_graphs=use_cuda_graphs, shard=ctx)
        self.ctx = ctx
        self._closed = False
        self._on_close: list[Callable[[], None]] = []

    def on_close(self, callback: Callable[[], None]) -> None:
        """Runs `callback` after the workers got the stop message (release their actors)."""
        self._on_close.append(callback)

    @torch.inference_mode()
    def execute(self, sched_out: SchedulerOutput) -> torch.Tensor:
        self._check_open()
        if sched_out.chunks or sched_out.swap_out or sched_out.swap_in:
            _broadcast(StepMessage.from_schedule(sched_out), self.ctx)
        return super().execute(sched_out)

    def export_blocks(self, block_ids: list[int]) -> torch.Tensor:
        """All heads of `block_ids`: [L, 2, n, block_size, Hkv, D], gathered from the shards."""
        self._check_open()
        local = super().export_blocks(block_ids)  # [L, 2, n, bs, Hkv / N, D]; validates ids
        _broadcast(StepMessage(export_blocks=list(block_ids)), self.ctx)
        parts = [torch.empty_like(local) for _ in range(self.ctx.world_size)]
        dist.gather(local.contiguous(), parts, dst=0, group=self.ctx.group)
        return torch.cat(parts, dim=4)

    def import_blocks(self, block_ids: list[int], data: torch.Tensor) -> None:
        """Writes all heads `data` ([L, 2, n, block_size, Hkv, D]); each shard keeps its own."""
        self._check_open()
        self._block_index(block_ids, "block_ids")
        shape = list(self.kv_cache.shape)
        shape[2], shape[4] = len(block_ids), self._kv_heads * self.ctx.world_size
        if list(data.shape) != shape:
            raise ValueError(f"data: shape {tuple(data.shape)} must be {tuple(shape)}")
        _broadcast(StepMessage(import_blocks=list(block_ids)), self.ctx)
        parts = data.to(self.device, self.dtype).chunk(self.ctx.world_size, dim=4)
        mine = torch.empty_like(parts[0])
        dist.scatter(mine, [p.contiguous() for p in parts], src=0, group=self.ctx.group)
        super().import_blocks(block_ids, mine)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the tensor-parallel runner is closed")

    def close(self) -> None:
        """Stops the workers' loops (idempotent)."""
        if self._closed:
            return
        self._closed = True
        _broadcast(StepMessage(stop=True), self.ctx)
        # Every rank tears its group down at the same time, as torchrun programs do: tearing down
        # an NCCL communicator can wait for the peers to tear theirs down too, so rank 0 must not
        # wait for the workers to exit before destroying its own (seen hanging on 2xH200).
        dist.destroy_process_group()
        for callback in self._on_close:
            callback()


def follow(runner: ModelRunner, ctx: ShardContext) -> int:
    """A worker's loop: runs each broadcast step until the stop message; returns steps run.

    The process group is destroyed on the way out, so the worker's process is clean.

    A step that fails here (a bad block id) fails the same way on rank 0, which reports it to
    the requests; the worker logs it and waits for the next step.
    """
    steps = 0
    while True:
        msg = _broadcast(None, ctx)
        if msg.stop:
            logger.info("shard %d: stop after %d steps", ctx.rank, steps)
            try:
                dist.destroy_process_group()
            except Exception as exc:  # rank 0 (the store's host) may already be gone: harmless
                logger.warning("shard %d: process group teardown: %s", ctx.rank, exc)
            return steps
        if msg.export_blocks is not None:
            local = runner.export_blocks(msg.export_blocks)  # ids were checked on rank 0
            dist.gather(local.contiguous(), None, dst=0, group=ctx.group)
            continue
        if msg.import_blocks is not None:
            _receive_import(runner, ctx, msg.import_blocks)
            continue
        try:
            runner.execute(msg.to_schedule())
        except ValueError as exc:
            logger.warning("shard %d: step failed: %s", ctx.rank, exc)
        steps += 1


def _receive_import(runner: ModelRunner, ctx: ShardContext, block_ids: list[int]) -> None:
    shape = list(runner.kv_cache.shape)
    shape[2] = len(block_ids)  # [L, 2, n, bs, Hkv / N, D]
    mine = torch.empty(shape, dtype=runner.dtype, device=runner.device)
    dist.scatter(mine, None, src=0, group=ctx.group)
    runner.import_blocks(block_ids, mine)
