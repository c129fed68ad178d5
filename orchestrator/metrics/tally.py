"""A histogram's running state in plain Python: what the controller keeps of migrations so that
the collector can export a histogram without the controller importing prometheus."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass
class BucketTally:
    """Observations counted into buckets with upper bounds `bounds` (ascending), plus +Inf."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; last: +Inf
    total: float = 0.0

    def __post_init__(self) -> None:
        if list(self.bounds) != sorted(self.bounds):
            raise ValueError(f"bounds: must ascend, got {self.bounds}")
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le = "<=").
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, count of observations <= le) per bucket, +Inf last: Prometheus's shape."""
        out, running = [], 0
        for bound, n in zip(
            (*map(repr, map(float, self.bounds)), "+Inf"), self.counts, strict=True
        ):
            running += n
            out.append((bound, float(running)))
        return out
