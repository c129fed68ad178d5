"""Plain types of live migration: a request's whole state as it moves between replicas, and how
a migration ended. Torch-free; protos/replica.proto mirrors them (tests/pure/test_wire_schema.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from actors.common.sampling_params import SamplingParams


@dataclass(frozen=True)
class DetokenizerState:
    """Where a request's streaming detokenizer stands (actors.engine.detokenizer)."""

    ids: tuple[int, ...]  # the decoding window's tokens (prompt tail + output)
    prefix_offset: int
    read_offset: int
    output_text: str
    num_emitted: int  # characters of output_text the client already has
    stop_reason: str | None = None


@dataclass(frozen=True)
class RequestState:
    """Everything a request is, apart from its KV blocks: exported by the source engine at the
    pause, imported by the destination, which continues exactly where the source stopped."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    output_token_ids: tuple[int, ...]
    num_computed_tokens: int  # tokens whose KV travels with it (0: it moves without KV)
    sampling: SamplingParams
    extra_eos_token_ids: tuple[int, ...]
    priority: int
    age_s: float  # since it arrived (arrival times are per-process monotonic clocks)
    num_preemptions: int
    num_cached_tokens: int
    generator_state: bytes  # the sampler's seed and random generator (export_generator_state)
    detokenizer: DetokenizerState
    eos_token_id: int | None = None
    adapter_id: str | None = None
    # The replica's own accounting, so usage and resumes stay what the client was told.
    client_prompt_tokens: int = 0  # the client's prompt, without tokens resumed after
    num_resumed: int = 0

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)


@dataclass(frozen=True)
class MigrationReport:
    """How one migration ended (the MigrateOut command's answer, an event, an admin reply)."""

    migration_id: str
    request_id: str
    outcome: str  # committed | aborted
    reason: str = ""
    stages: int = 0
    blocks: int = 0
    bytes: int = 0
    downtime_ms: float = 0.0  # the request's pause: last stage + state + commit
    duration_ms: float = 0.0
    target: str = ""

    @property
    def committed(self) -> bool:
        return self.outcome == "committed"
