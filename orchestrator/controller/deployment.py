"""From the deployment YAML (policies.config) to what the controller and replicas run."""

from __future__ import annotations

import json
import threading

from actors.engine.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from actors.replica.actor import ReplicaOptions
from actors.replica.engine_factory import ReplicaSpec
from actors.replica.tls import TlsFiles
from orchestrator.controller.service import PolicyChange
from orchestrator.controller.settings import (
    CONTROLLER_NAME,
    NAMESPACE,
    ControllerSettings,
    ReplicaResources,
)
from policies.config import DeploymentConfig, parse_policy_update

WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def advertised_host(bind_host: str) -> str | None:
    """What peers dial for a server bound to `bind_host`; None: the node's IP (from Ray).

    A loopback bind is a single-machine deployment; a wildcard bind serves other nodes, which
    must be given this node's address rather than 0.0.0.0.
    """
    return None if bind_host in WILDCARD_HOSTS else bind_host


def tls_from_config(cfg: DeploymentConfig) -> TlsFiles | None:
    sec = cfg.security
    if sec.tls_cert_file is None:
        return None
    return TlsFiles(cert=sec.tls_cert_file, key=sec.tls_key_file, ca=sec.tls_ca_file)


def replica_spec(cfg: DeploymentConfig) -> ReplicaSpec:
    kw = cfg.engine_kwargs()
    # A replica without a GPU must not grab one its node happens to have.
    device = "auto" if cfg.replicas.resources.num_gpus > 0 else "cpu"
    engine = EngineConfig(
        model=ModelConfig(**kw["model"]),
        cache=CacheConfig(**kw["cache"]),
        scheduler=SchedulerConfig(**kw["scheduler"]),
        device=device,
    )
    return ReplicaSpec(engine=engine, tensor_parallel_size=cfg.model.tensor_parallel_size)


def settings_from_config(
    cfg: DeploymentConfig,
    *,
    custom_resources: dict[str, float] | None = None,
    grpc_port: int | None = None,
) -> ControllerSettings:
    """The controller's settings; `custom_resources` pins replicas (e.g. one per node)."""
    server, res = cfg.server, cfg.replicas.resources
    tls = tls_from_config(cfg)
    options = ReplicaOptions(
        bind_host=server.host,
        advertise_host=advertised_host(server.host),
        report_interval_s=server.report_interval_s,
        tls=tls,
        controller_name=CONTROLLER_NAME,
        controller_namespace=NAMESPACE,
    )
    return ControllerSettings(
        replicas=cfg.replicas.initial,
        spec=replica_spec(cfg),
        replica_options=options,
        resources=ReplicaResources(
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus,
            custom=tuple(sorted((custom_resources or {}).items())),
        ),
        policy_name=cfg.dispatch.policy,
        policy_params_json=json.dumps(cfg.dispatch_params(), sort_keys=True),
        grpc_host=server.host,
        grpc_port=server.controller_grpc_port if grpc_port is None else grpc_port,
        unhealthy_after_s=server.unhealthy_after_s,
        tls=tls,
    )


class ConfigUpdater:
    """Validates `fleetlm config apply` texts against the running config and keeps the result."""

    def __init__(self, current: DeploymentConfig) -> None:
        self._current = current
        self._lock = threading.Lock()

    @property
    def current(self) -> DeploymentConfig:
        return self._current

    def __call__(self, yaml_text: str) -> PolicyChange:
        """Raises ConfigError (a ValueError) naming the key path; nothing changes then."""
        with self._lock:
            update = parse_policy_update(yaml_text, self._current, source="<config apply>")
            self._current = update.config
        cfg = update.config
        replicas = cfg.replicas.initial if "replicas" in update.changed else None
        return PolicyChange(cfg.dispatch.policy, cfg.dispatch_params(), replicas)
