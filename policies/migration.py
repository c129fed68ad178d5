"""Where a migrating request goes: pure decisions on the ClusterView (no torch, ray or grpc).

The controller asks these when an operator migrates a request without naming a target, and when
it empties a replica (drain, scale-in). A destination must be ready, not the source, and have
room: the request's KV blocks plus one block of growth per request it runs already (Llumnix's
"virtual usage": a replica's running requests keep claiming blocks).
"""

from __future__ import annotations

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
