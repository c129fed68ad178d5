"""Frozen snapshots the policies decide on: the cluster as the controller sees it, one request.

The controller builds a `ClusterView` from the replicas' load reports; routers (the controller
itself, or ingress replicas that receive the view as a stream) run the very same policy objects
on it. Nothing here is mutated: a router that dispatches derives a new view with
`add_inflight` so its next decision already accounts for the request it just sent.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any


class ReplicaState(str, enum.Enum):
    """Where a replica is in its life, as the controller sees it (protos: ReplicaState)."""

    STARTING = "starting"  # created, not registered yet
    READY = "ready"  # takes new requests
    CORDONED = "cordoned"  # takes no new requests; its running ones finish
    DRAINING = "draining"  # cordoned; its requests move away (or finish), then it is drained
    DRAINED = "drained"  # an operator's drain is done: it holds no request, takes none
    DEAD = "dead"  # stopped reporting


@dataclass(frozen=True, kw_only=True)
class ReplicaLoad:
    """A replica's load as it reports it: the one definition.

    protos/common.proto's ReplicaLoad mirrors it field for field (protos/convert.py converts
    generically; tests/pure/test_wire_schema.py checks the mirror). A ReplicaView is a
    ReplicaLoad plus what the controller and routers add, so a field added here reaches the
    view, the wire, the admin API and `fleetlm status` with no other edit.
    """

    running: int = 0
    waiting: int = 0
    kv_blocks_free: int = 0
    kv_blocks_total: int = 0
    block_size: int = 16
    tokens_in_flight: int = 0
    step_time_ms: float = 0.0
    max_running: int = 256
    num_steps: int = 0
    num_preemptions: int = 0
    cordoned: bool = False  # the replica refuses new requests (ReplicaControl Cordon)
    high_priority_running: int = 0  # running requests with priority < 0 (served first)
    migrating_out: int = 0  # migrations this replica is the source of, now
    migrating_in: int = 0  # migrations it is the destination of (reservations held), now
    migrated_bytes: int = 0  # KV bytes it has sent for migrations since it started
    adapters_loaded: frozenset[str] = frozenset()  # LoRA adapters it can serve (host memory)
    adapters_resident: frozenset[str] = frozenset()  # ... of which in device memory now
    adapter_slots: int = 0  # adapters its device memory holds at once (max_loras)
    adapter_loads: int = 0  # adapters copied into device memory since it started (prefetches too)
    adapter_evictions: int = 0  # ... and evicted to make room
    # Requests per adapter since it started (placement's demand, policies/adapters.py).
    adapter_requests: dict[str, int] = field(default_factory=dict)
    # Prompt tokens it admitted since it started, and those of them its prefix cache served:
    # counters, so a hit rate over any window is the ratio of their increases.
    prompt_tokens_total: int = 0
    prefix_hit_tokens_total: int = 0
    # A summary of the replica's cached prefix block hashes (policies.prefix.block_hashes).
    prefix_hashes: frozenset[str] = frozenset()


LOAD_FIELDS = tuple(f.name for f in fields(ReplicaLoad))


def load_fields(load: ReplicaLoad) -> dict[str, Any]:
    """The ReplicaLoad part of `load` (a ReplicaLoad or a ReplicaView) as keyword arguments."""
    return {name: getattr(load, name) for name in LOAD_FIELDS}


@dataclass(frozen=True)
class ReplicaIdentity:
    """Who a replica process is (protos/common.proto: ReplicaIdentity)."""

    replica_id: str
    address: str  # its gRPC host:port
    node_id: str = ""
    incarnation: str = ""  # changes when the replica process restarts
    pid: int = 0  # the replica actor's process on its node
    started_at: float = 0.0  # Unix time it started serving


@dataclass(frozen=True)
class ReplicaView(ReplicaLoad):
    """One replica's last reported load plus what the controller and routers know of it."""

    replica_id: str
    address: str
    state: ReplicaState = ReplicaState.READY
    # Dispatches sent but not yet reflected in a load report: without them two routers reading
    # the same stale snapshot would both pick the same "idle" replica.
    inflight_dispatches: int = 0
    node_id: str = ""
    version: int = 0

    @property
    def healthy(self) -> bool:
        """Whether the replica takes new requests (routers send it nothing otherwise)."""
        return self.state is ReplicaState.READY

    @property
    def pending(self) -> int:
        """Requests the replica has accepted or is about to receive but not yet running."""
        return self.waiting + self.inflight_dispatches

    @property
    def load(self) -> float:
        """Running plus pending requests relative to how many the replica can run at once."""
        return (self.running + self.pending) / max(1, self.max_running)

    @property
    def queue_length(self) -> int:
        """Pending requests that will not find a free running slot: the real queue."""
        spare_slots = max(0, self.max_running - self.running)
        return max(0, self.pending - spare_slots)

    @property
    def kv_free_fraction(self) -> float:
        if self.kv_blocks_total <= 0:
            return 0.0
        return max(0, self.kv_blocks_free) / self.kv_blocks_total

    def is_full(self, max_queue: int) -> bool:
        """True when the replica's queue is at `max_queue`: another request would only wait."""
        return self.queue_length >= max_queue


@dataclass(frozen=True)
class ClusterView:
    """Every replica the controller knows at one moment; `generation` increases per change."""

    replicas: tuple[ReplicaView, ...] = ()
    timestamp: float = 0.0
    generation: int = 0

    def healthy(self) -> tuple[ReplicaView, ...]:
        return tuple(r for r in self.replicas if r.healthy)

    def get(self, replica_id: str) -> ReplicaView | None:
        for replica in self.replicas:
            if replica.replica_id == replica_id:
                return replica
        return None

    def add_inflight(self, replica_id: str, delta: int = 1) -> ClusterView:
        """A new view where `replica_id` has `delta` more in-flight dispatches (floored at 0)."""
        return self.with_inflight({replica_id: delta})

    def with_inflight(self, extra: Mapping[str, int]) -> ClusterView:
        """A new view with each replica's in-flight dispatches raised by `extra[replica_id]`."""
        if not extra:
            return self
        replicas = tuple(
            replace(r, inflight_dispatches=max(0, r.inflight_dispatches + extra[r.replica_id]))
            if r.replica_id in extra
            else r
            for r in self.replicas
        )
        return replace(self, replicas=replicas)


@dataclass(frozen=True)
class RequestMeta:
    """What a dispatch policy may know about a request: sizes, priority, adapter, prefix blocks."""

    request_id: str
    num_prompt_tokens: int
    max_tokens: int
    priority: int = 0  # lower value is served first (as in the engine)
    adapter_id: str | None = None
    # Block hashes of the prompt's full blocks, in order (policies.prefix.block_hashes).
    prefix_hashes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.request_id:
            raise ValueError("request_id: must be a non-empty string")
        if self.num_prompt_tokens < 0:
            raise ValueError(f"num_prompt_tokens: must be >= 0, got {self.num_prompt_tokens}")
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens: must be >= 0, got {self.max_tokens}")
        if not isinstance(self.prefix_hashes, tuple):
            raise ValueError("prefix_hashes: must be a tuple of block hashes")

    def blocks_needed(self, block_size: int) -> int:
        """KV blocks the prompt occupies once prefilled (ceil division)."""
        return -(-self.num_prompt_tokens // max(1, block_size))
