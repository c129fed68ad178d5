"""The one place that converts the control plane's policy types to and from protobuf."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from policies.cluster_view import ClusterView, ReplicaView, RequestMeta
from protos import controller_pb2

_VIEW_SCALARS = (
    "replica_id",
    "address",
    "healthy",
    "running",
    "waiting",
    "kv_blocks_free",
    "kv_blocks_total",
    "block_size",
    "tokens_in_flight",
    "step_time_ms",
    "max_running",
    "inflight_dispatches",
    "node_id",
    "version",
)


@dataclass(frozen=True)
class ViewUpdate:
    """What the controller streams to routers: its view and the dispatch policy to run on it."""

    view: ClusterView
    policy_name: str
    policy_params: dict[str, Any] = field(default_factory=dict)


def meta_to_pb(meta: RequestMeta) -> controller_pb2.RequestMetaMsg:
    msg = controller_pb2.RequestMetaMsg(
        request_id=meta.request_id,
        num_prompt_tokens=meta.num_prompt_tokens,
        max_tokens=meta.max_tokens,
        priority=meta.priority,
        prefix_hashes=meta.prefix_hashes,
    )
    if meta.adapter_id is not None:
        msg.adapter_id = meta.adapter_id
    return msg


def meta_from_pb(msg: controller_pb2.RequestMetaMsg) -> RequestMeta:
    return RequestMeta(
        request_id=msg.request_id,
        num_prompt_tokens=msg.num_prompt_tokens,
        max_tokens=msg.max_tokens,
        priority=msg.priority,
        adapter_id=msg.adapter_id if msg.HasField("adapter_id") else None,
        prefix_hashes=tuple(msg.prefix_hashes),
    )


def replica_to_pb(r: ReplicaView) -> controller_pb2.ReplicaViewMsg:
    msg = controller_pb2.ReplicaViewMsg(**{k: getattr(r, k) for k in _VIEW_SCALARS})
    msg.adapters_resident.extend(sorted(r.adapters_resident))
    msg.prefix_hashes.extend(sorted(r.prefix_hashes))
    return msg


def replica_from_pb(msg: controller_pb2.ReplicaViewMsg) -> ReplicaView:
    kwargs: dict[str, Any] = {k: getattr(msg, k) for k in _VIEW_SCALARS}
    return ReplicaView(
        adapters_resident=frozenset(msg.adapters_resident),
        prefix_hashes=frozenset(msg.prefix_hashes),
        **kwargs,
    )


def update_to_pb(update: ViewUpdate) -> controller_pb2.ClusterViewMsg:
    return controller_pb2.ClusterViewMsg(
        replicas=[replica_to_pb(r) for r in update.view.replicas],
        timestamp=update.view.timestamp,
        generation=update.view.generation,
        policy_name=update.policy_name,
        policy_params_json=json.dumps(update.policy_params, sort_keys=True),
    )


def update_from_pb(msg: controller_pb2.ClusterViewMsg) -> ViewUpdate:
    view = ClusterView(
        replicas=tuple(replica_from_pb(r) for r in msg.replicas),
        timestamp=msg.timestamp,
        generation=msg.generation,
    )
    params = json.loads(msg.policy_params_json) if msg.policy_params_json else {}
    return ViewUpdate(view=view, policy_name=msg.policy_name, policy_params=params)
