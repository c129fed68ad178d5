"""Tensor-parallel model runners: rank 0 drives, the other ranks follow its broadcasts.

    rank 0:  ShardedRunner.execute(sched_out)  ->  build + send the packed step, run its slice
    rank k:  follow(runner)                    ->  loop: receive a packed step, run its slice

Every rank runs the same forward on its slice (the row-parallel layers all-reduce inside it);
only rank 0's logits are used. Rank 0 builds each step's inputs once and sends them packed
(actors/shard/step.py): a small header over the gloo group, then the index tensors over the
tensor group, which on GPU is an NCCL broadcast from device to device that the host only
enqueues. A worker's critical path per step is one small gloo receive and the launches.
`close()` sends the stop message that ends each worker's loop. KV export/import (the migration
seam) gathers/scatters each rank's heads; like `execute`, call them from the engine's thread
only: every collective must run in the same order on all ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.distributed as dist

from actors.common.config import EngineConfig
from actors.engine.input_batch import InputBatch
from actors.engine.model_runner import ModelRunner
from actors.engine.outputs import SchedulerOutput
from actors.shard.context import ShardContext
from actors.shard.parallel import ShardParallel
from actors.shard.step import (
    HEADER_LEN,
    Kind,
    StepHeader,
    pack_aux,
    pack_payload,
    step_header,
    unpack_aux,
    unpack_payload,
)

logger = logging.getLogger(__name__)


class StepChannel:
    """Moves packed steps from rank 0 to the other ranks (same order of calls on every rank)."""

    def __init__(self, ctx: ShardContext, device: torch.device) -> None:
        self._ctx = ctx
        self._device = device
        self._control = ctx.cpu_group if ctx.cpu_group is not None else ctx.group  # gloo

    def send(
        self, header: StepHeader, payload: torch.Tensor | None, aux: torch.Tensor | None
    ) -> torch.Tensor | None:
        """Rank 0: broadcasts the header, aux and payload; returns the payload on the device."""
        dist.broadcast(header.to_tensor(), src=0, group=self._control)
        if header.aux_len:
            assert aux is not None and aux.numel() == header.aux_len
            dist.broadcast(aux, src=0, group=self._control)
        if payload is None:
            return None
        if self._device.type == "cuda":
            payload = payload.pin_memory().to(self._device, non_blocking=True)
        dist.broadcast(payload, src=0, group=self._ctx.group)
        return payload

    def receive(self) -> tuple[StepHeader, torch.Tensor | None, torch.Tensor]:
        """A worker: (header, payload on the device or None, aux on the host)."""
        raw = torch.empty(HEADER_LEN, dtype=torch.int64)
        dist.broadcast(raw, src=0, group=self._control)
        header = StepHeader.from_tensor(raw)
        aux = torch.empty(header.aux_len, dtype=torch.int64)
        if header.aux_len:
            dist.broadcast(aux, src=0, group=self._control)
        if header.kind != Kind.STEP or not header.num_chunks:
            return header, None, aux
        payload = torch.empty(header.payload_len, dtype=torch.int32, device=self._device)
        dist.broadcast(payload, src=0, group=self._ctx.group)
        return header, payload, aux


class ShardedRunner(ModelRunner):
    """Rank 0's runner: each step is sent to the other shards before its own forward."""

    def __init__(
        self, config: EngineConfig, ctx: ShardContext, *, use_cuda_graphs: bool | None = None
    ) -> None:
        if ctx.rank != 0:
            raise ValueError(f"rank: ShardedRunner runs on rank 0, got rank {ctx.rank}")
        super().__init__(
            config, use_cuda_graphs=use_cuda_graphs, tensor_parallel=ShardParallel(ctx)
        )
        self.ctx = ctx
        self._channel = StepChannel(ctx, self.device)
        self._closed = False
        self._on_close: list[Callable[[], None]] = []

    def on_close(self, callback: Callable[[], None]) -> None:
        """Runs `callback` after the workers got the stop message (release their actors)."""
        self._on_close.append(callback)

    @torch.inference_mode()
    def execute(self, sched_out: SchedulerOutput) -> torch.Tensor:
        self._check_open()
        swap_out, swap_in = sched_out.swap_out, sched_out.swap_in
        if swap_out:
            self._swap_indices(swap_out, "swap_out")  # refuse bad ids before anything is sent
        if swap_in:
            self._swap_indices(swap_in, "swap_in")
        chunks = sched_out.chunks
        # Built (and validated) on the host before sending: a bad chunk fails here, alone.
        batch = self._build(chunks, torch.device("cpu")) if chunks else None
        if batch is None and not swap_out and not swap_in:
            return torch.empty(0, self.vocab_size, device=self.device)
        header = step_header(batch, swap_out, swap_in)
        aux = pack_aux(swap_out, swap_in, []) if header.aux_len else None
        payload = self._channel.send(header, None if batch is None else pack_payload(batch), aux)
        self.swap(swap_out, swap_in)
        if batch is None or payload is None:
            return torch.empty(0, self.vocab_size, device=self.device)
        return self.run_batch(_on_device(header, payload, batch))

    def export_blocks(self, block_ids: list[int]) -> torch.Tensor:
        """All heads of `block_ids`: [L, 2, n, block_size, Hkv, D], gathered from the shards."""
        self._check_open()
        local = super().export_blocks(block_ids)  # [L, 2, n, bs, Hkv / N, D]; validates ids
        self._send_blocks(Kind.EXPORT, block_ids)
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
        self._send_blocks(Kind.IMPORT, block_ids)
        parts = data.to(self.device, self.dtype).chunk(self.ctx.world_size, dim=4)
        mine = torch.empty_like(parts[0])
        dist.scatter(mine, [p.contiguous() for p in parts], src=0, group=self.ctx.group)
        super().import_blocks(block_ids, mine)

    def _send_blocks(self, kind: Kind, block_ids: list[int]) -> None:
        header = StepHeader(kind, num_blocks=len(block_ids))
        self._channel.send(header, None, pack_aux([], [], block_ids))

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the tensor-parallel runner is closed")

    def close(self) -> None:
        """Stops the workers' loops (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._channel.send(StepHeader(Kind.STOP), None, None)
        # Every rank tears its group down at the same time, as torchrun programs do: tearing down
        # an NCCL communicator can wait for the peers to tear theirs down too, so rank 0 must not
        # wait for the workers to exit before destroying its own (seen hanging on 2xH200).
        dist.destroy_process_group()
        for callback in self._on_close:
            callback()


def _on_device(header: StepHeader, payload: torch.Tensor, host: InputBatch) -> InputBatch:
    """Rank 0 runs on the same device buffer the workers got (one upload for every input)."""
    if payload.device.type == "cpu":
        return host  # gloo sent the host tensors themselves: nothing to unpack
    return unpack_payload(header, payload)


def follow(runner: ModelRunner, ctx: ShardContext) -> int:
    """A worker's loop: runs each broadcast step until the stop message; returns steps run.

    The process group is destroyed on the way out, so the worker's process is clean.

    A step that fails here fails the same way on rank 0, which reports it to the requests; the
    worker logs it and waits for the next step.
    """
    channel = StepChannel(ctx, runner.device)
    steps = 0
    while True:
        header, payload, aux = channel.receive()
        if header.kind == Kind.STOP:
            logger.info("shard %d: stop after %d steps", ctx.rank, steps)
            try:
                dist.destroy_process_group()
            except Exception as exc:  # rank 0 (the store's host) may already be gone: harmless
                logger.warning("shard %d: process group teardown: %s", ctx.rank, exc)
            return steps
        swap_out, swap_in, block_ids = unpack_aux(header, aux)
        if header.kind == Kind.EXPORT:
            local = runner.export_blocks(block_ids)  # ids were checked on rank 0
            dist.gather(local.contiguous(), None, dst=0, group=ctx.group)
            continue
        if header.kind == Kind.IMPORT:
            _receive_import(runner, ctx, block_ids)
            continue
        try:
            runner.swap(swap_out, swap_in)
            if payload is not None:
                runner.run_batch(unpack_payload(header, payload))
        except ValueError as exc:
            logger.warning("shard %d: step failed: %s", ctx.rank, exc)
        steps += 1


def _receive_import(runner: ModelRunner, ctx: ShardContext, block_ids: list[int]) -> None:
    shape = list(runner.kv_cache.shape)
    shape[2] = len(block_ids)  # [L, 2, n, bs, Hkv / N, D]
    mine = torch.empty(shape, dtype=runner.dtype, device=runner.device)
    dist.scatter(mine, None, src=0, group=ctx.group)
    runner.import_blocks(block_ids, mine)
