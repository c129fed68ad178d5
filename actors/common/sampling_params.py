"""Per-request sampling parameters, validated up front with errors that name the field."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # HF semantics: over prompt and output tokens
    presence_penalty: float = 0.0  # OpenAI semantics: over output tokens
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    logprobs: int | None = None  # top-n logprobs per sampled token (0: only the sampled one)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self, vocab_size: int, max_logprobs: int = 20) -> None:
        """Raise ValueError naming the offending field."""
        _check(self.n >= 1, "n", f"must be >= 1, got {self.n}")
        _check(self.max_tokens >= 1, "max_tokens", f"must be >= 1, got {self.max_tokens}")
        _check(self.temperature >= 0.0, "temperature", f"must be >= 0, got {self.temperature}")
        _check(0.0 < self.top_p <= 1.0, "top_p", f"must be in (0, 1], got {self.top_p}")
        _check(self.top_k >= 0 or self.top_k == -1, "top_k", f"must be >= 0, got {self.top_k}")
        _check(0.0 <= self.min_p <= 1.0, "min_p", f"must be in [0, 1], got {self.min_p}")
        _check(
            self.repetition_penalty > 0.0,
            "repetition_penalty",
            f"must be > 0, got {self.repetition_penalty}",
        )
        _check(
            -2.0 <= self.presence_penalty <= 2.0,
            "presence_penalty",
            f"must be in [-2, 2], got {self.presence_penalty}",
        )
        _check(
            -2.0 <= self.frequency_penalty <= 2.0,
            "frequency_penalty",
            f"must be in [-2, 2], got {self.frequency_penalty}",
        )
        bad = [t for t in self.stop_token_ids if not 0 <= t < vocab_size]
        _check(not bad, "stop_token_ids", f"unknown token ids {bad} (vocab size {vocab_size})")
        _check(all(self.stop), "stop", "stop strings must be non-empty")
        if self.logprobs is not None:
            _check(
                0 <= self.logprobs <= max_logprobs,
                "logprobs",
                f"must be in [0, {max_logprobs}], got {self.logprobs}",
            )


def _check(ok: bool, field: str, reason: str) -> None:
    if not ok:
        raise ValueError(f"{field}: {reason}")
