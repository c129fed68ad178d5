"""From the deployment YAML (orchestrator.config.load) to what the controller and replicas run."""

from __future__ import annotations

import os
import secrets
import threading

import yaml

from actors.common.config import (
    AdapterRef,
    CacheConfig,
    EngineConfig,
    GrpcSecurity,
    LoRAConfig,
    MigrationSettings,
    ModelConfig,
    ReplicaOptions,
    ReplicaSpec,
    SchedulerConfig,
)
from orchestrator.config.load import ConfigUpdate, DeploymentConfig, parse_policy_update
from orchestrator.controller.settings import (
    CONTROLLER_NAME,
    NAMESPACE,
    ControllerSettings,
    ReplicaResources,
)
from policies.adapters import PlacementParams
from policies.migration import RebalanceParams

WILDCARD_HOSTS = ("0.0.0.0", "::", "")  # noqa: S104 (recognized, not bound here)
GRPC_SECRET_ENV = "FLEETLM_GRPC_SECRET"  # noqa: S105 (a variable name, not a secret)


def advertised_host(bind_host: str) -> str | None:
    """What peers dial for a server bound to `bind_host`; None: the node's IP (from Ray).

    A loopback bind is a single-machine deployment; a wildcard bind serves other nodes, which
    must be given this node's address rather than 0.0.0.0.
    """
    return None if bind_host in WILDCARD_HOSTS else bind_host


def resolve_grpc_secret(cfg: DeploymentConfig) -> str:
    """security.grpc_secret, else $FLEETLM_GRPC_SECRET, else a new random one: whoever starts a
    controller resolves it once; the controller hands it to its replicas and ingresses."""
    configured = cfg.security.grpc_secret or os.environ.get(GRPC_SECRET_ENV, "").strip()
    return configured or secrets.token_urlsafe(32)


def grpc_security(cfg: DeploymentConfig, secret: str) -> GrpcSecurity:
    sec = cfg.security
    return GrpcSecurity(
        cert=sec.tls_cert_file, key=sec.tls_key_file, ca=sec.tls_ca_file, secret=secret
    )


def replica_spec(cfg: DeploymentConfig) -> ReplicaSpec:
    kw = cfg.engine_kwargs()
    # A replica without a GPU must not grab one its node happens to have.
    device = "auto" if cfg.replicas.resources.num_gpus > 0 else "cpu"
    a = cfg.adapters
    engine = EngineConfig(
        model=ModelConfig(**kw["model"]),
        cache=CacheConfig(**kw["cache"]),
        scheduler=SchedulerConfig(**kw["scheduler"]),
        lora=LoRAConfig(max_loras=a.max_loras, max_lora_rank=a.max_lora_rank),
        device=device,
    )
    return ReplicaSpec(
        engine=engine,
        tensor_parallel_size=cfg.model.tensor_parallel_size,
        adapters=tuple(AdapterRef(src.name, src.path) for src in a.preload),
    )


def migration_settings(cfg: DeploymentConfig) -> MigrationSettings:
    m = cfg.migration
    return MigrationSettings(
        transport=m.transport,
        downtime_budget_ms=m.downtime_budget_ms,
        max_stages=m.max_stages,
        max_concurrent=m.max_concurrent_per_replica,
        reservation_timeout_s=m.reservation_timeout_s,
        attach_timeout_s=m.attach_timeout_s,
    )


def rebalance_params(cfg: DeploymentConfig) -> RebalanceParams | None:
    r = cfg.migration.rebalance
    if not (cfg.migration.enabled and r.enabled):
        return None
    return RebalanceParams(r.high_kv_usage, r.low_kv_usage, r.max_moves, r.priority_headroom)


def placement_params(cfg: DeploymentConfig) -> PlacementParams | None:
    p = cfg.adapters.placement
    if not (cfg.adapters.max_loras and p.enabled):
        return None
    return PlacementParams(**p.model_dump(exclude={"enabled", "interval_s"}))


def settings_from_config(
    cfg: DeploymentConfig,
    *,
    admin_token_digest: str,
    grpc_secret: str,
    custom_resources: dict[str, float] | None = None,
    grpc_port: int | None = None,
    admin_port: int | None = None,
) -> ControllerSettings:
    """The controller's settings; `custom_resources` pins replicas (e.g. one per node).

    `admin_token_digest`: the SHA-256 of the admin API's token (the token itself stays with
    whoever resolved it, orchestrator/admin/token.py). `grpc_secret`: what every gRPC call of
    the deployment carries (resolve_grpc_secret)."""
    server, res = cfg.server, cfg.replicas.resources
    security = grpc_security(cfg, grpc_secret)
    options = ReplicaOptions(
        bind_host=server.host,
        advertise_host=advertised_host(server.host),
        report_interval_s=server.report_interval_s,
        stall_after_s=server.engine_stall_s,
        security=security,
        controller_name=CONTROLLER_NAME,
        controller_namespace=NAMESPACE,
        migration=migration_settings(cfg),
    )
    return ControllerSettings(
        spec=replica_spec(cfg),
        replica_options=options,
        resources=ReplicaResources(
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus,
            custom=tuple(sorted((custom_resources or {}).items())),
        ),
        grpc_host=server.host,
        grpc_port=server.controller_grpc_port if grpc_port is None else grpc_port,
        admin_host=server.admin_host,
        admin_port=server.admin_port if admin_port is None else admin_port,
        admin_token_digest=admin_token_digest,
        migration_enabled=cfg.migration.enabled,
        migration_concurrency=cfg.migration.max_concurrent_per_replica,
        rebalance=rebalance_params(cfg),
        rebalance_interval_s=cfg.migration.rebalance.interval_s,
        placement=placement_params(cfg),
        placement_interval_s=cfg.adapters.placement.interval_s,
        unhealthy_after_s=server.unhealthy_after_s,
        security=security,
    )


class ConfigUpdater:
    """The running deployment config: the one place the desired replica count and the dispatch
    policy live. Validates run-time updates (`fleetlm config apply`, the admin API) against it
    and keeps the result."""

    def __init__(self, current: DeploymentConfig) -> None:
        self._current = current
        self._lock = threading.Lock()

    @property
    def current(self) -> DeploymentConfig:
        return self._current

    def __call__(self, yaml_text: str) -> ConfigUpdate:
        """Raises ConfigError (a ValueError) naming the key paths; nothing changes then."""
        with self._lock:
            update = parse_policy_update(yaml_text, self._current, source="<config apply>")
            self._current = update.config
        return update

    def yaml(self) -> str:
        """The running config as YAML, secrets (API keys, the admin token) masked."""
        data = self._current.model_dump(mode="json")
        security = data["security"]
        if security.get("api_keys"):
            security["api_keys"] = ["<hidden>"] * len(security["api_keys"])
        if security.get("admin_token"):
            security["admin_token"] = "<hidden>"  # noqa: S105 (the mask itself)
        return yaml.safe_dump(data, sort_keys=False)
