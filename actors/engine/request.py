"""A request is two counters and a block table.

`num_tokens` (tokens known: prompt + generated) and `num_computed_tokens` (tokens whose KV is in
the cache), plus `block_ids`, the blocks that hold that KV. Chunked prefill, preemption and
migration all move blocks and keep the counters; there are no prefill/decode flags.

This module is pure state: no torch. The sampler's per-request generator is held as an opaque
object and exported as bytes.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from actors.common.sampling_params import SamplingParams


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2  # lost its blocks (recompute) and waits to be scheduled again
    SWAPPED = 3  # its blocks live in host memory (swap preemption)
    FINISHED_STOPPED = 10
    FINISHED_LENGTH = 11
    FINISHED_ABORTED = 12
    FINISHED_ERROR = 13

    @property
    def finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED


FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FINISHED_ERROR: "error",
}


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_id: int | None = None
    extra_eos_token_ids: tuple[int, ...] = ()  # e.g. Llama 3's <|eot_id|> beside <|end_of_text|>
    arrival_time: float = field(default_factory=time.monotonic)
    priority: int = 0  # lower value is served first; FCFS within a priority
    adapter_id: str | None = None  # the LoRA adapter's name (None: the base model)
    adapter_version: str = ""  # its content hash: with the name, part of the prefix-cache key
    # Mutable state.
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    block_ids: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache on admission
    status: RequestStatus = RequestStatus.WAITING
    num_preemptions: int = 0
    generator: Any = None  # the sampler's per-request generator (torch.Generator)
    sampling_seed: int | None = None  # the seed actually used (drawn if params.seed is None)
    parent_id: str | None = None  # for n > 1: the user's request id; this is choice `index`
    index: int = 0
    error: str | None = None

    @property
    def cache_salt(self) -> str | None:
        """What the prefix cache keys blocks by besides tokens: KV computed under one adapter
        version is never reused for another."""
        if self.adapter_id is None or not self.adapter_version:
            return self.adapter_id
        return f"{self.adapter_id}@{self.adapter_version}"

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    def token_at(self, i: int) -> int:
        p = len(self.prompt_token_ids)
        return self.prompt_token_ids[i] if i < p else self.output_token_ids[i - p]

    def tokens_slice(self, start: int, end: int) -> list[int]:
        p = len(self.prompt_token_ids)
        if end <= p:
            return self.prompt_token_ids[start:end]
        if start >= p:
            return self.output_token_ids[start - p : end - p]
        return self.prompt_token_ids[start:] + self.output_token_ids[: end - p]
