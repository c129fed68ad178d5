"""What the controller needs from a deployment, as one frozen, picklable value."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from actors.replica.actor import ReplicaOptions
from actors.replica.engine_factory import ReplicaSpec
from actors.replica.tls import TlsFiles

CONTROLLER_NAME = "fleetlm-controller"
NAMESPACE = "fleetlm"
REPLICA_NAME_PREFIX = "fleetlm-replica-"


@dataclass(frozen=True)
class ReplicaResources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    custom: tuple[tuple[str, float], ...] = ()  # Ray custom resources, e.g. (("node_a", 1),)

    def __post_init__(self) -> None:
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError("replicas.resources: num_cpus and num_gpus must be >= 0")


@dataclass(frozen=True)
class ControllerSettings:
    replicas: int = 1  # desired count (the reconciler converges to it)
    spec: ReplicaSpec = field(default_factory=ReplicaSpec)
    replica_options: ReplicaOptions = field(default_factory=ReplicaOptions)
    resources: ReplicaResources = field(default_factory=ReplicaResources)
    policy_name: str = "least_load"
    policy_params_json: str = "{}"  # JSON keeps the value frozen and picklable
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 0  # 0: any free port (replicas find a restarted controller through Ray)
    unhealthy_after_s: float = 2.0
    reconcile_interval_s: float = 0.5
    # A replica that never registered within this long is given up and replaced.
    start_timeout_s: float = 300.0
    # An unhealthy replica whose actor is gone is replaced after this long.
    dead_after_s: float = 5.0
    watch_min_interval_s: float = 0.05  # at most this often a watcher gets a new view
    tls: TlsFiles | None = None

    def __post_init__(self) -> None:
        if self.replicas < 0:
            raise ValueError(f"replicas.count: must be >= 0, got {self.replicas}")
        for name in ("unhealthy_after_s", "reconcile_interval_s", "start_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        if not isinstance(json.loads(self.policy_params_json), dict):
            raise ValueError("dispatch.params: must be a mapping")

    @property
    def policy_params(self) -> dict[str, Any]:
        return json.loads(self.policy_params_json)
