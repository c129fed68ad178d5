"""Which requests move where: pure decisions on the ClusterView (no torch, ray or grpc).

The controller asks `pick_target` when an operator migrates a request without naming a target
and when it empties a replica (drain, scale-in), and `rebalance_moves` every rebalance round. A
destination must be ready, not the source, and have room: the request's KV blocks plus one block
of growth per request it runs already (Llumnix's "virtual usage": running requests keep claiming
blocks).
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.cluster_view import ClusterView, ReplicaView


def headroom(r: ReplicaView) -> int:
    """Free KV blocks once each running request has grown by one more block."""
    return r.kv_blocks_free - r.running


def can_take(r: ReplicaView, blocks_needed: int) -> bool:
    return r.healthy and headroom(r) > blocks_needed


def pick_target(view: ClusterView, source_id: str, blocks_needed: int) -> str | None:
    """The ready replica (not `source_id`) with room for `blocks_needed` blocks and the most
    of it relative to its size, ties by lower load then id; None when none has room."""
    candidates = [
        r for r in view.replicas if r.replica_id != source_id and can_take(r, blocks_needed)
    ]
    if not candidates:
        return None
    best = min(
        candidates,
        key=lambda r: (-headroom(r) / max(1, r.kv_blocks_total), r.load, r.replica_id),
    )
    return best.replica_id


@dataclass(frozen=True)
class RebalanceParams:
    """When the controller moves requests between replicas on its own (migration.rebalance)."""

    high_kv_usage: float = 0.90  # a replica above this (counting growth) sheds requests...
    low_kv_usage: float = 0.60  # ...to replicas below this with nothing waiting
    max_moves: int = 2  # migrations started per round, at most one per source
    # A replica running high-priority requests (priority < 0) keeps this share of its KV free
    # for them: below it, it sheds normal-priority requests (0 turns this off).
    priority_headroom: float = 0.10

    def __post_init__(self) -> None:
        if not 0.0 <= self.low_kv_usage < self.high_kv_usage <= 1.0:
            raise ValueError(
                "migration.rebalance: need 0 <= low_kv_usage < high_kv_usage <= 1, got "
                f"{self.low_kv_usage} and {self.high_kv_usage}"
            )
        if self.max_moves < 1:
            raise ValueError(f"migration.rebalance.max_moves: must be >= 1, got {self.max_moves}")
        if not 0.0 <= self.priority_headroom < 1.0:
            raise ValueError(
                "migration.rebalance.priority_headroom: must be in [0, 1), got "
                f"{self.priority_headroom}"
            )


def virtual_usage(r: ReplicaView) -> float:
    """KV usage once every running request grew one more block (Llumnix's virtual usage)."""
    if r.kv_blocks_total <= 0:
        return 1.0
    return 1.0 - max(0, headroom(r)) / r.kv_blocks_total


def needs_priority_headroom(r: ReplicaView, params: RebalanceParams) -> bool:
    """It runs high-priority requests and has less free KV (counting growth) than they keep."""
    return (
        r.high_priority_running > 0
        and r.running > r.high_priority_running  # something of normal priority can leave
        and 1.0 - virtual_usage(r) < params.priority_headroom
    )


def rebalance_moves(view: ClusterView, params: RebalanceParams) -> list[tuple[str, str]]:
    """(source, destination) pairs for this round, the most pressed source with the idlest
    destination first. A source is pressed when its virtual usage is above `high_kv_usage`,
    when requests wait in its queue (moving a small running one away makes room for the queue:
    what defragmentation is for), or when it runs high-priority requests with less headroom
    than `priority_headroom`; a destination is below `low_kv_usage` with an empty queue and, for
    a priority move, no high-priority requests of its own."""
    ready = [r for r in view.replicas if r.healthy]
    sources = sorted(
        (
            r
            for r in ready
            if r.running > 0
            and (
                virtual_usage(r) > params.high_kv_usage
                or r.waiting
                or needs_priority_headroom(r, params)
            )
        ),
        key=lambda r: (-virtual_usage(r), -r.waiting, r.replica_id),
    )
    targets = sorted(
        (r for r in ready if r.waiting == 0 and virtual_usage(r) < params.low_kv_usage),
        key=lambda r: (r.high_priority_running, virtual_usage(r), r.replica_id),
    )
    moves: list[tuple[str, str]] = []
    for source, target in zip(sources, targets, strict=False):
        if source.replica_id != target.replica_id and len(moves) < params.max_moves:
            moves.append((source.replica_id, target.replica_id))
    return moves
