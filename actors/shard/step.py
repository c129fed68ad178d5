"""The step description rank 0 broadcasts to the other shards: only what their forward needs.

A worker never sees the engine's Request objects (sampler state, text, callbacks); it gets each
chunk's new tokens, position and block table, and rebuilds a SchedulerOutput whose chunks point
at small `StepRequest` stand-ins with the same counters, so ModelRunner.execute runs unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.engine.outputs import ScheduledChunk, SchedulerOutput


@dataclass(frozen=True)
class StepRequest:
    """What the model runner reads of a request (ids, counters, blocks, the chunk's tokens)."""

    request_id: str
    num_computed_tokens: int
    num_tokens: int
    block_ids: list[int]
    chunk_tokens: list[int]  # tokens [num_computed_tokens, + len) only

    def tokens_slice(self, start: int, end: int) -> list[int]:
        lo = start - self.num_computed_tokens
        return self.chunk_tokens[lo : end - self.num_computed_tokens]


@dataclass(frozen=True)
class StepMessage:
    """One step; a KV export/import (migration: every rank moves its heads of those blocks);
    or the stop message (`stop=True`) that ends a worker's loop."""

    chunks: list[tuple[StepRequest, int]] = field(default_factory=list)  # (request, new tokens)
    swap_out: list[tuple[int, int]] = field(default_factory=list)
    swap_in: list[tuple[int, int]] = field(default_factory=list)
    export_blocks: list[int] | None = None
    import_blocks: list[int] | None = None
    stop: bool = False

    @classmethod
    def from_schedule(cls, sched_out: SchedulerOutput) -> StepMessage:
        chunks = []
        for c in sched_out.chunks:
            req = c.request
            view = StepRequest(
                req.request_id,
                c.start,
                req.num_tokens,
                list(req.block_ids),
                req.tokens_slice(c.start, c.end),
            )
            chunks.append((view, c.num_new_tokens))
        return cls(chunks, list(sched_out.swap_out), list(sched_out.swap_in))

    def to_schedule(self) -> SchedulerOutput:
        # StepRequest carries every attribute ModelRunner reads of a Request.
        chunks = [ScheduledChunk(req, n) for req, n in self.chunks]  # type: ignore[arg-type]
        return SchedulerOutput(chunks=chunks, swap_out=self.swap_out, swap_in=self.swap_in)
