"""Bring the whole stack up (Ray, controller + replicas, Serve ingress) and down again.

Used by `fleetlm serve` and by the cluster tests' fixture, so both run exactly the same path.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from orchestrator.admin import PREFIX
from orchestrator.admin.token import ADMIN_TOKEN_ENV, AdminToken, write_admin_files
from orchestrator.config.load import DeploymentConfig, load_config, preset_path

if TYPE_CHECKING:
    from actors.common.config import GrpcSecurity
    from orchestrator.api.deployment import IngressSettings
    from orchestrator.controller.launcher import ClusterHandle

logger = logging.getLogger(__name__)

HttpPath = Literal["direct", "serve-proxy"]
HTTP_PATH_ENV = "FLEETLM_INGRESS_HTTP"  # "serve-proxy": Serve's proxy on the configured port


def _default_http_path() -> HttpPath:
    value = os.environ.get(HTTP_PATH_ENV, "direct")
    if value not in ("direct", "serve-proxy"):
        raise ValueError(f"{HTTP_PATH_ENV}: must be 'direct' or 'serve-proxy', got {value!r}")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class ServeOptions:
    config_path: str | None = None  # None: the default preset (+ one replica per local GPU)
    address: str | None = None  # a Ray cluster to join; None starts a local one
    host: str | None = None
    port: int | None = None
    config: DeploymentConfig | None = None  # an already loaded config wins over config_path
    ingress_replicas: int = 1  # Serve replicas of the ingress (each routes on its own)
    # "direct": the ingress replicas serve server.host:http_port themselves, Serve's HTTP proxy
    # is not in the data path (~12 ms less per request, docs/serving-benchmarks.md);
    # "serve-proxy": Ray Serve's proxy serves that port and forwards to the ingress replicas.
    http_path: HttpPath = field(default_factory=_default_http_path)
    # With "direct": also run Serve's proxy on this port, in front of the same replicas
    # (for comparisons; None: no Serve proxy at all).
    serve_proxy_port: int | None = None
    admin_port: int | None = None  # overrides server.admin_port (0: any free port)
    # Record the admin URL (and a generated token) in fleetlm's cache dir for the CLI.
    write_admin_files: bool = True


def resolve_config(options: ServeOptions) -> DeploymentConfig:
    if options.config is not None:
        cfg = options.config
    elif options.config_path is not None:
        cfg = load_config(Path(options.config_path))
    else:
        cfg = _with_local_gpus(load_config(preset_path("default")))
    server = cfg.server
    if options.host is not None or options.port is not None:
        server = server.model_copy(
            update={
                "host": options.host if options.host is not None else server.host,
                "http_port": options.port if options.port is not None else server.http_port,
            }
        )
        cfg = cfg.model_copy(update={"server": server})
    return cfg


def _with_local_gpus(cfg: DeploymentConfig) -> DeploymentConfig:
    """The default deployment runs one replica per GPU when this machine has GPUs."""
    gpus = _local_gpu_count()
    if gpus == 0:
        return cfg
    resources = cfg.replicas.resources.model_copy(update={"num_gpus": 1.0})
    replicas = cfg.replicas.model_copy(update={"count": gpus, "resources": resources})
    return cfg.model_copy(update={"replicas": replicas})


def _local_gpu_count() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(
            # nvidia-smi from PATH, as the driver installs it; fixed arguments, no shell.
            ["nvidia-smi", "-L"],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def api_key_digests(cfg: DeploymentConfig) -> frozenset[str]:
    """Digests of security.api_keys plus the keys in the env var security.api_keys_env names."""
    from orchestrator.api.app import key_digest

    sec = cfg.security
    keys = list(sec.api_keys or ())
    if sec.api_keys_env:
        raw = os.environ.get(sec.api_keys_env)
        if raw is None:
            raise ValueError(
                f"security.api_keys_env: the environment variable {sec.api_keys_env} is not set"
            )
        keys.extend(k.strip() for k in raw.split(",") if k.strip())
        if not keys:
            raise ValueError(f"security.api_keys_env: {sec.api_keys_env} holds no keys")
    return frozenset(key_digest(k) for k in keys)


def ingress_settings(
    cfg: DeploymentConfig,
    controller_address: str,
    security: GrpcSecurity,
    ingress_replicas: int = 1,
    http_port: int | None = None,
    node_resource: str | None = None,
    admin_url: str | None = None,
) -> IngressSettings:
    """`http_port` set: the ingress replicas listen there themselves, on the node that has the
    Ray resource `node_resource`."""
    from orchestrator.api.deployment import IngressSettings
    from orchestrator.api.serving import RequestLimits

    return IngressSettings(
        controller_address=controller_address,
        model_name=cfg.model.name,
        max_body_bytes=cfg.server.max_body_bytes,
        security=security,
        limits=RequestLimits(cfg.server.max_n, cfg.server.max_stop_sequences),
        api_key_digests=api_key_digests(cfg),
        num_replicas=ingress_replicas,
        http_host=cfg.server.host if http_port is not None else None,
        http_port=http_port,
        node_resource=node_resource,
        admin_url=admin_url,
    )


def check_port_free(host: str, port: int) -> int:
    """The port to listen on (0: a free one), refused if something already listens there.

    Bound here without SO_REUSEPORT so that a listener left by another process, even a stale
    ingress that would share the port, is found before anything is deployed.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ValueError(f"server.http_port: cannot listen on {host}:{port}: {exc}") from exc
        return int(s.getsockname()[1])


class Stack:
    """A running deployment: the cluster handle plus the Serve application in front of it."""

    def __init__(
        self,
        cfg: DeploymentConfig,
        cluster: object,
        http_port: int,
        serve_proxy_port: int | None = None,
        http_path: HttpPath = "direct",
    ) -> None:
        self.config = cfg
        self.cluster = cluster
        self.http_port = http_port
        self.serve_proxy_port = serve_proxy_port  # Serve's proxy, where it is not http_port
        self.http_path = http_path

    @property
    def base_url(self) -> str:
        return self._url(self.http_port)

    @property
    def serve_proxy_url(self) -> str | None:
        return None if self.serve_proxy_port is None else self._url(self.serve_proxy_port)

    def _url(self, port: int) -> str:
        host = self.config.server.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104 (a comparison)
        if ":" in shown:
            shown = f"[{shown}]"
        return f"http://{shown}:{port}"

    @property
    def controller_address(self) -> str:
        return self.cluster.controller_address  # type: ignore[attr-defined]

    @property
    def admin_url(self) -> str:
        return self.cluster.admin_url  # type: ignore[attr-defined]

    def banner(self) -> list[str]:
        token: AdminToken = self.cluster.admin_token  # type: ignore[attr-defined]
        dashboard = f"{self.admin_url}/"
        if token.source == "generated":  # shown once, as Jupyter does; also in the cache dir
            dashboard += f"?token={token.value}"
        else:
            dashboard += (
                f"  (token from {'the config' if token.source == 'config' else ADMIN_TOKEN_ENV})"
            )
        return [
            f"fleetlm: serving {self.config.model.name!r}",
            f"  OpenAI API  {self.base_url}/v1",
            f"  health      {self.base_url}/health",
            f"  metrics     {self.base_url}/metrics",
            f"  dashboard   {dashboard}",
            f"  admin API   {self.admin_url}{PREFIX}/  (bearer token)",
            f"  controller  {self.controller_address} (gRPC)",
            f"  Ray         {self.ray_address}  (`ray status --address` it; docs/deploy.md)",
            f"  HTTP path   {self._path_line()}",
            "  fleetlm status | cordon REPLICA | scale N   (the admin API; token found here)",
            "  Ctrl-C to stop",
        ]

    @property
    def ray_address(self) -> str:
        """Ray's GCS address (host:port) this deployment runs on."""
        import ray

        return ray.get_runtime_context().gcs_address

    def ray_reachable(self, timeout_s: float = 1.0) -> bool:
        """Whether Ray's GCS still accepts connections (a TCP connect: it never hangs the way a
        Ray call does while Ray waits for a dead GCS to come back)."""
        host, _, port = self.ray_address.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
                return True
        except OSError:
            return False

    def _path_line(self) -> str:
        if self.http_path == "serve-proxy":
            return f"Ray Serve's proxy -> ingress replicas ({HTTP_PATH_ENV}=serve-proxy)"
        line = "direct to the ingress replicas (Serve's proxy off the data path)"
        if self.serve_proxy_url is not None:
            line += f"; Serve's proxy also at {self.serve_proxy_url}"
        return line

    def shutdown(self) -> None:
        from ray import serve

        try:
            serve.shutdown()
        except Exception as exc:  # keep going: the cluster must still come down
            logger.warning("serve shutdown: %s", exc)
        self.cluster.shutdown()  # type: ignore[attr-defined]


def start_stack(options: ServeOptions) -> Stack:
    from orchestrator.controller.launcher import start_cluster

    cfg = resolve_config(options)
    api_key_digests(cfg)  # a missing key variable fails before anything starts
    host = cfg.server.host
    direct = options.http_path == "direct"
    # Checked before anything starts; port 0 picks a free port once, shared by every replica.
    port = check_port_free(host, cfg.server.http_port) if direct else cfg.server.http_port
    proxy_port = options.serve_proxy_port if direct else None
    cluster = start_cluster(cfg, address=options.address, admin_port=options.admin_port)
    try:
        if options.write_admin_files:  # before the API answers: a client may look at once
            write_admin_files(cluster.admin_url, cluster.admin_token)
        _deploy_ingress(cfg, options, cluster, port if direct else None)
    except BaseException:
        cluster.shutdown()
        raise
    return Stack(cfg, cluster, port, proxy_port, options.http_path)


def _deploy_ingress(
    cfg: DeploymentConfig, options: ServeOptions, cluster: ClusterHandle, port: int | None
) -> None:
    """Serve runs the ingress replicas; `port` set: they listen on it themselves."""
    from ray import serve

    from orchestrator.api.deployment import APP_NAME, build_ingress

    host = cfg.server.host
    node_resource = _this_node_resource() if port is not None else None
    settings = ingress_settings(
        cfg,
        cluster.controller_address,
        cluster.security,
        options.ingress_replicas,
        http_port=port,
        node_resource=node_resource,
        admin_url=cluster.admin_url,
    )
    if port is None:
        serve.start(http_options={"host": host, "port": cfg.server.http_port})
    elif options.serve_proxy_port is not None:
        serve.start(http_options={"host": host, "port": options.serve_proxy_port})
    else:
        serve.start(proxy_location="Disabled")
    serve.run(build_ingress(settings), name=APP_NAME, route_prefix="/", blocking=False)


def _this_node_resource() -> str:
    """A Ray resource that only this (the driver's) node has. The head's marker when the driver
    runs there, as `fleetlm serve` does: several raylets may share one IP (containers, Ray's
    cluster_utils), so `node:<ip>` alone could place the ingress on another node."""
    import ray

    me = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node["NodeID"] == me and "node:__internal_head__" in node["Resources"]:
            return "node:__internal_head__"
    return f"node:{ray.util.get_node_ip_address()}"
