"""How a migration's KV blocks travel from the source's cache into the destination's
reservation. One interface, one implementation per path:

  host      the source gathers the blocks on its device, copies them to host memory and sends
            them as bytes over gRPC (ReplicaControl.PushBlocks), in chunks of chunk_bytes; the
            destination scatters them into its reserved blocks. Works everywhere, CPU included.
  cuda_ipc  same node: the destination maps the source's KV cache once through a CUDA IPC handle
            (sent in PrepareMigrateIn) and copies the blocks device to device itself
            (PullBlocks carries only block ids). See cuda_ipc.py.

A transport's `send` is the source's side of one stage: it runs the gather on the engine
thread (EngineLoop.call, between two steps) and everything else off it, so the request keeps
decoding while its blocks move.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

import torch

from actors.common.commands import BlockChunk, Command, CommandResult
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
    """Blocks as bytes over gRPC, through host memory."""

    name = "host"

    def __init__(
        self,
        engine: LLMEngine,
        on_engine: OnEngine,
        push: Callable[[BlockChunk], Awaitable[CommandResult]],
        chunk_bytes: int,
    ) -> None:
        self._engine = engine
        self._on_engine = on_engine
        self._push = push
        self._per_chunk = max(1, chunk_bytes // engine.runner.kv_block_bytes)

    async def send(self, migration_id: str, start: int, block_ids: list[int]) -> int:
        moved = 0
        runner = self._engine.runner
        for i in range(0, len(block_ids), self._per_chunk):
            ids = block_ids[i : i + self._per_chunk]
            # The gather is the only part that reads the cache: on the engine thread, quick.
            gathered = await self._on_engine(lambda ids=ids: runner.export_blocks(ids))
            data, dtype = await asyncio.to_thread(to_bytes, gathered)
            chunk = BlockChunk(migration_id, start + i, len(ids), data, dtype)
            result = await self._push(chunk)
            if result.error is not None:
                raise TransportError(f"destination refused blocks {start + i}..: {result.error}")
            moved += len(data)
        return moved


def to_bytes(blocks: torch.Tensor) -> tuple[bytes, str]:
    """A gathered [L, 2, n, bs, H, D] tensor as host bytes (C order) and its dtype's name."""
    host = blocks.detach().to("cpu").contiguous()
    return host.view(torch.uint8).numpy().tobytes(), str(host.dtype).removeprefix("torch.")


def from_bytes(data: bytes, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The inverse of to_bytes; ValueError when the bytes do not make `shape` of `dtype`."""
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"dtype: unknown {dtype!r}")
    flat = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    expected = torch.Size(shape).numel() * torch.empty((), dtype=torch_dtype).element_size()
    if flat.numel() != expected:
        raise ValueError(f"data: {flat.numel()} bytes, {expected} expected for {shape} {dtype}")
    return flat.view(torch_dtype).reshape(shape)
