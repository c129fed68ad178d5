"""What the controller needs from a deployment, as one frozen, picklable value."""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.common.config import GrpcSecurity, ReplicaOptions, ReplicaSpec
from policies.adapters import PlacementParams
from policies.migration import RebalanceParams

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
    """What a deployment fixes for its lifetime. What may change while it runs (the replica
    count, the dispatch policy) lives in the deployment config (deployment.ConfigUpdater)."""

    spec: ReplicaSpec = field(default_factory=ReplicaSpec)
    replica_options: ReplicaOptions = field(default_factory=ReplicaOptions)
    resources: ReplicaResources = field(default_factory=ReplicaResources)
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 0  # 0: any free port (replicas find a restarted controller through Ray)
    admin_host: str = "127.0.0.1"
    admin_port: int = 8080  # 0: any free port (ControllerActor.admin_url() tells which)
    admin_token_digest: str = ""  # SHA-256 hex of the admin token; "" refuses every request
    migration_enabled: bool = True  # drain and scale-in move requests away (else they wait)
    migration_timeout_s: float = 120.0  # a MigrateOut answers when the migration has ended
    migration_concurrency: int = 2  # migrations out of one replica at once (drains)
    rebalance: RebalanceParams | None = None  # None: the controller never moves on its own
    rebalance_interval_s: float = 1.0
    placement: PlacementParams | None = None  # None: adapters sit where routing puts them
    placement_interval_s: float = 2.0
    unhealthy_after_s: float = 2.0
    reconcile_interval_s: float = 0.5
    # A replica that never registered within this long is given up and replaced.
    start_timeout_s: float = 300.0
    # An unhealthy replica whose actor is gone is replaced after this long.
    dead_after_s: float = 5.0
    watch_min_interval_s: float = 0.05  # at most this often a watcher gets a new view
    security: GrpcSecurity | None = None

    def __post_init__(self) -> None:
        for name in ("unhealthy_after_s", "reconcile_interval_s", "start_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
