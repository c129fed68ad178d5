"""What the engine hands out: scheduler decisions for the model runner and per-request deltas."""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.common.types import TokenLogprob
from actors.engine.request import Request


@dataclass
class ScheduledChunk:
    """`num_new_tokens` tokens of `request` starting at its `num_computed_tokens` run this step."""

    request: Request
    num_new_tokens: int

    @property
    def start(self) -> int:
        return self.request.num_computed_tokens

    @property
    def end(self) -> int:
        return self.request.num_computed_tokens + self.num_new_tokens

    @property
    def needs_sample(self) -> bool:
        """The chunk reaches the last known token, so the step yields the next token."""
        return self.end == self.request.num_tokens


@dataclass
class SchedulerOutput:
    """One step. Chunks are ordered decodes first (requests already running), then prefills.

    Counters are NOT advanced by `schedule()`; `Scheduler.update()` advances them after the step.
    Swap maps are (device_block, host_block) pairs, executed by the model runner before the step.
    """

    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    swap_out: list[tuple[int, int]] = field(default_factory=list)
    swap_in: list[tuple[int, int]] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(c.num_new_tokens for c in self.chunks)

    @property
    def is_empty(self) -> bool:
        return not self.chunks


@dataclass
class RequestOutput:
    """A delta for one choice of one request: what it produced this step."""

    request_id: str  # the user's id (a child of an n > 1 request reports its parent's id)
    index: int  # the choice index (0 for n == 1)
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None = None  # stop | length | abort | error
    logprobs: list[TokenLogprob] | None = None
    error: str | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    num_cached_tokens: int = 0
    stop_reason: str | int | None = None  # the stop string or token id that ended it


@dataclass
class CompletionResult:
    """What synchronous `generate()` returns per prompt: one entry per choice."""

    request_id: str
    prompt_token_ids: list[int]
    texts: list[str]
    token_ids: list[list[int]]
    finish_reasons: list[str]
    logprobs: list[list[TokenLogprob] | None]
