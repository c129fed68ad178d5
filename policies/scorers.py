"""Scorers for the `weighted` dispatch policy (llm-d style): each maps candidates to [0, 1].

A scorer sees the whole candidate list so it can normalise across it (min-max for queue-like
counts, as llm-d does): 1 is the best replica for this request on that criterion, 0 the worst.
Scorers read the LiveView's columns (`candidates` are replica indices, in view order) and return
one score per candidate, or a sparse {position: score} dict where every other candidate scores 0
(a prompt's cached prefix is on a few replicas at most).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Union

from policies.cluster_view import RequestMeta
from policies.live_view import LiveView
from policies.params import CommonParams, require
from policies.prefix import leading_matches


def _min_max_low_is_good(values: Sequence[int]) -> list[float]:
    lo, hi = min(values), max(values)
    if hi == lo:
        return [1.0] * len(values)
    span = hi - lo
    return [(hi - v) / span for v in values]


Scores = Union[list[float], dict[int, float]]
Scorer = Callable[[LiveView, Sequence[int], RequestMeta], Scores]


def kv_free(live: LiveView, candidates: Sequence[int], req: RequestMeta) -> Scores:
    return live.column(live.kv_free_fraction, candidates)


def queue(live: LiveView, candidates: Sequence[int], req: RequestMeta) -> Scores:
    # waiting + in-flight dispatches: what a new request would queue behind.
    return _min_max_low_is_good(live.column(live.pending, candidates))


def inflight(live: LiveView, candidates: Sequence[int], req: RequestMeta) -> Scores:
    return _min_max_low_is_good(live.column(live.inflight, candidates))


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
            # Finite: inf * 0.0 is NaN, and a NaN total ranks nothing.
            require(
                0.0 <= weight < math.inf,
                f"weights.{name}",
                f"must be >= 0 and finite, got {weight}",
            )
        require(any(w > 0 for w in self.weights.values()), "weights", "needs a weight > 0")


def weighted_totals(
    live: LiveView, candidates: Sequence[int], req: RequestMeta, weights: Mapping[str, float]
) -> list[float]:
    """Per candidate, the sum of weight * score, accumulated in `weights` order."""
    totals: list[float] | None = None  # None: every total is still 0.0
    dense: list[tuple[float, list[float]]] = []  # terms not yet added, in order
    for name, weight in weights.items():
        if weight == 0.0:
            continue
        scores = SCORERS[name](live, candidates, req)
        if isinstance(scores, dict):
            if scores:
                totals = _add_terms(totals, dense, len(candidates))
                dense = []
                # The others score 0: adding weight * 0.0 would leave their totals unchanged.
                for pos, score in scores.items():
                    totals[pos] += weight * score
        else:
            dense.append((weight, scores))
    return _add_terms(totals, dense, len(candidates))


def _add_terms(
    totals: list[float] | None, terms: list[tuple[float, list[float]]], n: int
) -> list[float]:
    """totals + w1 * s1 + w2 * s2 + ..., added left to right, up to three terms per pass.

    `totals` None stands for n zeros: 0.0 + w * s is w * s exactly (weights and scores are
    finite and >= 0), so the first pass starts from the first term.
    """
    for k in range(0, len(terms), 3):
        totals = _add_chunk(totals, terms[k : k + 3])
    return [0.0] * n if totals is None else totals


def _add_chunk(totals: list[float] | None, chunk: list[tuple[float, list[float]]]) -> list[float]:
    if totals is None:
        if len(chunk) == 3:
            (w1, s1), (w2, s2), (w3, s3) = chunk
            return [w1 * a + w2 * b + w3 * c for a, b, c in zip(s1, s2, s3, strict=True)]
        if len(chunk) == 2:
            (w1, s1), (w2, s2) = chunk
            return [w1 * a + w2 * b for a, b in zip(s1, s2, strict=True)]
        ((w1, s1),) = chunk
        return [w1 * a for a in s1]
    if len(chunk) == 3:
        (w1, s1), (w2, s2), (w3, s3) = chunk
        return [t + w1 * a + w2 * b + w3 * c for t, a, b, c in zip(totals, s1, s2, s3, strict=True)]
    if len(chunk) == 2:
        (w1, s1), (w2, s2) = chunk
        return [t + w1 * a + w2 * b for t, a, b in zip(totals, s1, s2, strict=True)]
    ((w1, s1),) = chunk
    return [t + w1 * a for t, a in zip(totals, s1, strict=True)]
