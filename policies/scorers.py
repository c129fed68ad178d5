"""Scorers for the `weighted` dispatch policy (llm-d style): each maps candidates to [0, 1].

A scorer sees the whole candidate list so it can normalise across it (min-max for queue-like
counts, as llm-d does): 1 is the best replica for this request on that criterion, 0 the worst.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from policies.cluster_view import ReplicaView, RequestMeta
from policies.params import CommonParams, require
from policies.prefix import leading_matches

Scorer = Callable[[Sequence[ReplicaView], RequestMeta], list[float]]


def _min_max_low_is_good(values: Sequence[float]) -> list[float]:
    lo, hi = min(values), max(values)
    if hi == lo:
        return [1.0] * len(values)
    return [(hi - v) / (hi - lo) for v in values]


def kv_free(candidates: Sequence[ReplicaView], req: RequestMeta) -> list[float]:
    return [r.kv_free_fraction for r in candidates]


def queue(candidates: Sequence[ReplicaView], req: RequestMeta) -> list[float]:
    # waiting + in-flight dispatches: what a new request would queue behind.
    return _min_max_low_is_good([r.pending for r in candidates])


def inflight(candidates: Sequence[ReplicaView], req: RequestMeta) -> list[float]:
    return _min_max_low_is_good([r.inflight_dispatches for r in candidates])


def load(candidates: Sequence[ReplicaView], req: RequestMeta) -> list[float]:
    return [max(0.0, 1.0 - r.load) for r in candidates]


def prefix(candidates: Sequence[ReplicaView], req: RequestMeta) -> list[float]:
    if not req.prefix_hashes:
        return [0.0] * len(candidates)
    total = len(req.prefix_hashes)
    return [leading_matches(req.prefix_hashes, r.prefix_hashes) / total for r in candidates]


def adapter_resident(candidates: Sequence[ReplicaView], req: RequestMeta) -> list[float]:
    # A base-model request scores 0 everywhere: the scorer then does not sway the choice.
    if req.adapter_id is None:
        return [0.0] * len(candidates)
    return [1.0 if req.adapter_id in r.adapters_resident else 0.0 for r in candidates]


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
    candidates: Sequence[ReplicaView], req: RequestMeta, weights: Mapping[str, float]
) -> list[float]:
    totals = [0.0] * len(candidates)
    for name, weight in weights.items():
        if weight == 0.0:
            continue
        for i, score in enumerate(SCORERS[name](candidates, req)):
            totals[i] += weight * score
    return totals
