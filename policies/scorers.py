"""Scorers for the `weighted` dispatch policy (llm-d style): each maps candidates to [0, 1].

A scorer sees the whole candidate list so it can normalise across it (min-max for queue-like
counts, as llm-d does): 1 is the best replica for this request on that criterion, 0 the worst.
Scorers read the LiveView's columns (`candidates` are replica indices, in view order) and return
one score per candidate, a sparse {position: score} dict where every other candidate scores 0 (a
prompt's cached prefix is on a few replicas at most), or LowIsGood counts that `weighted_totals`
normalises, weighs and adds in one pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Union

from policies.cluster_view import RequestMeta
from policies.live_view import LiveView
from policies.params import CommonParams, require
from policies.prefix import leading_matches


class LowIsGood:
    """Counts scored min-max, low is good: (hi - v) / (hi - lo), or 1 everywhere when all equal."""

    __slots__ = ("values",)

    def __init__(self, values: Sequence[int]) -> None:
        self.values = values

    def scores(self) -> list[float]:
        values = self.values
        lo, hi = min(values), max(values)
        if hi == lo:
            return [1.0] * len(values)
        span = hi - lo
        return [(hi - v) / span for v in values]

    def add_to(self, totals: list[float], weight: float) -> list[float]:
        """`totals` plus weight * scores(), element by element, with the same rounding."""
        values = self.values
        lo, hi = min(values), max(values)
        if hi == lo:
            return [t + weight for t in totals]  # weight * 1.0 is weight exactly
        span = hi - lo
        return [t + weight * ((hi - v) / span) for t, v in zip(totals, values, strict=True)]


Scores = Union[list[float], dict[int, float], LowIsGood]
Scorer = Callable[[LiveView, Sequence[int], RequestMeta], Scores]


def kv_free(live: LiveView, candidates: Sequence[int], req: RequestMeta) -> Scores:
    return live.column(live.kv_free_fraction, candidates)


def queue(live: LiveView, candidates: Sequence[int], req: RequestMeta) -> Scores:
    # waiting + in-flight dispatches: what a new request would queue behind.
    return LowIsGood(live.column(live.pending, candidates))


def inflight(live: LiveView, candidates: Sequence[int], req: RequestMeta) -> Scores:
    return LowIsGood(live.column(live.inflight, candidates))


def load(live: LiveView, candidates: Sequence[int], req: RequestMeta) -> Scores:
    # max(0, 1 - ReplicaView.load); load divides by max(1, max_running).
    busy, cap = live.column(live.busy, candidates), live.column(live.max_running, candidates)
    return [
        x if (x := 1.0 - b / (m if m > 1 else 1)) > 0.0 else 0.0
        for b, m in zip(busy, cap, strict=True)
    ]


def _positions(live: LiveView, candidates: Sequence[int]) -> Mapping[int, int] | None:
    """Replica index -> candidate position; None when they coincide (every replica is open)."""
    if len(candidates) == live.n:
        return None
    return {i: pos for pos, i in enumerate(candidates)}


def prefix(live: LiveView, candidates: Sequence[int], req: RequestMeta) -> Scores:
    hashes = req.prefix_hashes
    if not hashes:
        return {}
    total = len(hashes)
    holders = live.prefix_holders(hashes[0])  # a replica without the first block matches 0
    positions = _positions(live, candidates)
    scores: dict[int, float] = {}
    for i in holders:
        pos = i if positions is None else positions.get(i)
        if pos is not None:
            scores[pos] = leading_matches(hashes, live.prefix_hashes[i]) / total
    return scores


def adapter_resident(live: LiveView, candidates: Sequence[int], req: RequestMeta) -> Scores:
    # A base-model request scores 0 everywhere: the scorer then does not sway the choice.
    adapter = req.adapter_id
    if adapter is None:
        return {}
    resident = live.column(live.adapters, candidates)
    return {pos: 1.0 for pos, names in enumerate(resident) if adapter in names}


SCORERS: Mapping[str, Scorer] = MappingProxyType(
    {
        "kv_free": kv_free,
        "queue": queue,
        "prefix": prefix,
        "adapter_resident": adapter_resident,
        "inflight": inflight,
        "load": load,
    }
)


def _default_weights() -> dict[str, float]:
    return {"prefix": 3.0, "queue": 2.0, "kv_free": 2.0, "adapter_resident": 1.0, "inflight": 1.0}


@dataclass(frozen=True)
class WeightedParams(CommonParams):
    weights: dict[str, float] = field(default_factory=_default_weights)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, weight in self.weights.items():
            require(
                name in SCORERS,
                f"weights.{name}",
                f"unknown scorer (known: {', '.join(SCORERS)})",
            )
            require(weight >= 0.0, f"weights.{name}", f"must be >= 0, got {weight}")
        require(any(w > 0 for w in self.weights.values()), "weights", "needs a weight > 0")


def weighted_totals(
    live: LiveView, candidates: Sequence[int], req: RequestMeta, weights: Mapping[str, float]
) -> list[float]:
    """Per candidate, the sum of weight * score, accumulated in `weights` order."""
    totals = [0.0] * len(candidates)
    for name, weight in weights.items():
        if weight == 0.0:
            continue
        scores = SCORERS[name](live, candidates, req)
        if isinstance(scores, dict):
            # The others score 0: adding weight * 0.0 would leave their totals unchanged.
            for pos, score in scores.items():
                totals[pos] += weight * score
        elif isinstance(scores, LowIsGood):
            totals = scores.add_to(totals, weight)
        else:
            totals = [t + weight * score for t, score in zip(totals, scores, strict=True)]
    return totals
