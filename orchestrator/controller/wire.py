"""The one place that converts the control plane's policy types to and from protobuf.

A ReplicaView is a ReplicaLoad plus the controller's fields; on the wire the load is a nested
ReplicaLoad message, converted generically (protos/convert.py), so a load field added to the
dataclass and the proto travels with no edit here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from policies.cluster_view import ClusterView, ReplicaLoad, ReplicaView
from protos import controller_pb2
from protos.convert import fields_from_pb, to_pb


@dataclass(frozen=True)
class ViewUpdate:
    """What the controller streams to routers: its view and the dispatch policy to run on it."""

    view: ClusterView
    policy_name: str
    policy_params: dict[str, Any] = field(default_factory=dict)


def replica_to_pb(r: ReplicaView) -> controller_pb2.ReplicaViewMsg:
    msg = controller_pb2.ReplicaViewMsg()
    to_pb(r, msg, only=ReplicaView)
    to_pb(r, msg.load, only=ReplicaLoad)
    return msg


def replica_from_pb(msg: controller_pb2.ReplicaViewMsg) -> ReplicaView:
    return ReplicaView(
        **fields_from_pb(msg, ReplicaView, only=ReplicaView),
        **fields_from_pb(msg.load, ReplicaLoad),
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
