"""How a migration's KV blocks travel from the source's cache into the destination's
reservation. One interface, one implementation per path:

  host      the source gathers the blocks on its device, copies them to host memory and sends
            them as bytes over gRPC (ReplicaControl.PushBlocks, as raw frames: see
            wire.chunk_frame), in chunks of chunk_bytes; the destination scatters them into its
            reserved blocks. Works everywhere, CPU included.
  cuda_ipc  same node: the destination maps the source's KV cache once through a CUDA IPC handle
            (sent in PrepareMigrateIn) and copies the blocks device to device itself
            (PullBlocks carries only block ids). See cuda_ipc.py.

A transport's `send` is the source's side of one stage: it runs the gather on the engine
thread (EngineLoop.call, between two steps) and everything else off it, so the request keeps
decoding while its blocks move.
"""

from __future__ import annotations

import asyncio
import warnings
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import torch

from actors.common.commands import BlockChunk, Command, CommandResult
from actors.common.wire import chunk_frame
from actors.engine.engine import LLMEngine

OnEngine = Callable[[Callable[[], Any]], Awaitable[Any]]
SendCommand = Callable[[Command, str], Awaitable[CommandResult]]  # (command, command id)


class TransportError(RuntimeError):
    """The destination refused or lost a stage's blocks."""


class Transport(ABC):
    name = ""

    def source_handle(self) -> bytes:
        """What the destination needs to reach this replica's KV cache (b"": nothing)."""
        return b""

    @abstractmethod
    async def send(self, migration_id: str, start: int, block_ids: list[int]) -> int:
        """Move the source's `block_ids` into the reservation from index `start`; bytes moved."""


class HostTransport(Transport):
    """Blocks as bytes over gRPC, through host memory.

    Per chunk: the gather on the engine thread; off it, a copy into a pinned staging buffer (on
    a GPU) and one copy of that into the frame (wire.chunk_frame); the frame goes out while the
    next chunk is staged (PIPELINE chunks in flight). The destination reads the frame's bytes
    in place."""

    name = "host"
    PIPELINE = 2  # chunks in flight: staging the next overlaps pushing this one

    def __init__(
        self,
        engine: LLMEngine,
        on_engine: OnEngine,
        push: Callable[[str, bytes], Awaitable[CommandResult]],
        chunk_bytes: int,
    ) -> None:
        self._engine = engine
        self._on_engine = on_engine
        self._push = push
        self._per_chunk = max(1, chunk_bytes // engine.runner.kv_block_bytes)
        self._staging: torch.Tensor | None = None  # pinned, made on the first GPU chunk

    async def send(self, migration_id: str, start: int, block_ids: list[int]) -> int:
        moved = 0
        in_flight: deque[asyncio.Task[CommandResult]] = deque()
        try:
            for i in range(0, len(block_ids), self._per_chunk):
                ids = block_ids[i : i + self._per_chunk]
                frame = await self._frame(migration_id, start + i, ids)
                if len(in_flight) >= self.PIPELINE:
                    self._check(await in_flight.popleft(), start)
                in_flight.append(asyncio.create_task(self._push(migration_id, frame)))
                moved += len(frame)
            while in_flight:
                self._check(await in_flight.popleft(), start)
        finally:
            for task in in_flight:
                task.cancel()
        return moved

    async def _frame(self, migration_id: str, index: int, ids: list[int]) -> bytes:
        runner = self._engine.runner
        # The gather is the only part that reads the cache: on the engine thread, quick.
        gathered = await self._on_engine(lambda: runner.export_blocks(ids))  # [L, 2, n, bs, H, D]
        header = BlockChunk(migration_id, index, len(ids), b"", dtype_name(gathered.dtype))
        return await asyncio.to_thread(self._to_frame, header, gathered)

    def _to_frame(self, header: BlockChunk, gathered: torch.Tensor) -> bytes:
        host = gathered
        if gathered.is_cuda:
            nbytes = gathered.numel() * gathered.element_size()
            if self._staging is None:
                size = self._per_chunk * self._engine.runner.kv_block_bytes
                self._staging = torch.empty(size, dtype=torch.uint8, pin_memory=True)
            host = self._staging[:nbytes].view(gathered.dtype).view(gathered.shape)
            host.copy_(gathered)  # DMA into pinned memory
        return chunk_frame(header, memoryview(host.reshape(-1).view(torch.uint8).numpy()))

    @staticmethod
    def _check(result: CommandResult, start: int) -> None:
        if result.error is not None:
            raise TransportError(f"destination refused blocks from {start}: {result.error}")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def from_bytes(data: memoryview | bytes, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A received chunk's bytes as a tensor of `shape` and `dtype`, read in place (the caller
    only reads it); ValueError when the bytes do not make that shape."""
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"dtype: unknown {dtype!r}")
    nbytes = memoryview(data).nbytes
    expected = torch.Size(shape).numel() * torch.empty((), dtype=torch_dtype).element_size()
    if nbytes != expected:
        raise ValueError(f"data: {nbytes} bytes, {expected} expected for {shape} {dtype}")
    if expected == 0:
        return torch.empty(shape, dtype=torch_dtype)
    with warnings.catch_warnings():  # a read-only buffer: torch warns that writes would fail
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.frombuffer(data, dtype=torch.uint8)
    return flat.view(torch_dtype).reshape(shape)
