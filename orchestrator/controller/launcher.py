"""start_cluster: join or start Ray, create the controller actor, wait for healthy replicas."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import ray

from actors.common.config import GrpcSecurity
from actors.common.locator import ControllerLocator
from orchestrator.admin.client import AdminClient
from orchestrator.admin.token import AdminToken, resolve_admin_token
from orchestrator.config.load import DeploymentConfig
from orchestrator.controller.actor import ControllerActor
from orchestrator.controller.backend import RayBackend
from orchestrator.controller.client import ControllerClient
from orchestrator.controller.deployment import resolve_grpc_secret, settings_from_config
from orchestrator.controller.settings import CONTROLLER_NAME, NAMESPACE
from policies.cluster_view import ClusterView

logger = logging.getLogger(__name__)

HEAD_RESOURCE = "node:__internal_head__"  # Ray's marker resource of its head node
FAIL_FAST_AFTER = 2  # replica start failures after which starting the stack gives up
WAIT_SLICE_S = 2.0  # how often the wait for replicas looks at start failures


@dataclass(frozen=True)
class ReplicaInfo:
    replica_id: str
    address: str
    node_id: str
    healthy: bool


@dataclass
class ClusterHandle:
    controller_address: str
    admin_url: str
    admin_token: AdminToken
    replicas: list[ReplicaInfo]
    config: DeploymentConfig
    security: GrpcSecurity  # what a gRPC client of this deployment needs (TLS, its secret)
    owns_ray: bool = False
    _closed: bool = field(default=False, repr=False)

    def client(self) -> ControllerClient:
        return ControllerClient(self.controller_address, self.security)

    def admin(self) -> AdminClient:
        """A client of the controller's admin API (close it, or use it in a `with`)."""
        return AdminClient(self.admin_url, self.admin_token.value)

    def locator(self) -> ControllerLocator:
        """Finds the controller again after a restart (for Router(resolve=...))."""
        return ControllerLocator(CONTROLLER_NAME, NAMESPACE)

    def shutdown(self) -> None:
        """Stop the controller and every replica; shut Ray down if this call started it."""
        if self._closed:
            return
        self._closed = True
        stop_cluster()
        if self.owns_ray:
            ray.shutdown()


def start_cluster(
    config: DeploymentConfig,
    address: str | None = None,
    *,
    custom_resources: dict[str, float] | None = None,
    wait_s: float = 300.0,
    min_healthy: int = 1,
    admin_token: AdminToken | None = None,
    admin_port: int | None = None,
    on_head: bool = True,
) -> ClusterHandle:
    """Start the controller (which creates the replicas) and wait for `min_healthy` replicas.

    `custom_resources`: Ray resources each replica needs, e.g. to place one per node.
    `admin_token`: the admin API's token (default: resolved from the config, the environment,
    or generated); `admin_port` overrides server.admin_port (0: any free port). `on_head`: the
    controller runs on Ray's head node: the node that stays (a worker node may be scaled in or
    lost) and where a deployment's admin Service points (helm/).
    """
    owns_ray = not ray.is_initialized()
    if owns_ray:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=True)
    if _controller_exists():
        raise ValueError(
            "cluster: a fleetlm controller already runs in this Ray cluster "
            "(see `fleetlm status`; shut it down before starting another)"
        )
    token = admin_token or resolve_admin_token(config)
    settings = settings_from_config(
        config,
        admin_token_digest=token.digest,
        grpc_secret=resolve_grpc_secret(config),
        custom_resources=custom_resources,
        admin_port=admin_port,
    )
    controller = (
        ray.remote(ControllerActor)
        .options(
            name=CONTROLLER_NAME,
            namespace=NAMESPACE,
            lifetime="detached",
            max_restarts=-1,
            num_cpus=0,
            resources={HEAD_RESOURCE: 0.001} if on_head else None,
        )
        .remote(config, settings)
    )
    try:
        controller_address = ray.get(controller.grpc_address.remote(), timeout=120)
        admin_url = ray.get(controller.admin_url.remote(), timeout=30)
    except ray.exceptions.RayActorError as exc:
        ray.kill(controller, no_restart=True)  # it fails the same way on every restart
        raise ValueError(f"controller: failed to start: {_cause(exc)}") from exc
    handle = ClusterHandle(
        controller_address, admin_url, token, [], config, settings.security, owns_ray
    )
    client = handle.client()
    try:
        view = _wait_for_replicas(
            client, controller, min(min_healthy, config.replicas.initial), wait_s
        )
    except BaseException:
        client.close()
        handle.shutdown()
        raise
    client.close()
    handle.replicas = _replica_infos(view)
    logger.info("controller at %s, %d replicas healthy", controller_address, len(view.healthy()))
    return handle


def _wait_for_replicas(
    client: ControllerClient, controller: object, count: int, wait_s: float
) -> ClusterView:
    """`count` healthy replicas, or a ValueError with the replicas' own error as soon as they
    fail to start FAIL_FAST_AFTER times (a wrong model path fails every try the same way)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.wait_for_replicas(count, min(WAIT_SLICE_S, wait_s))
        except TimeoutError:
            pass
        failures = ray.get(controller.start_failures.remote(), timeout=30)  # type: ignore[attr-defined]
        if len(failures) >= FAIL_FAST_AFTER:
            raise ValueError(f"replicas: {len(failures)} failed to start; the last {failures[-1]}")
        if time.monotonic() > deadline:
            raise ValueError(
                f"replicas: fewer than {count} healthy after {wait_s:.0f}s (see `fleetlm events`)"
            )


def ensure_cluster(config: DeploymentConfig, yaml_text: str) -> tuple[ClusterHandle, bool]:
    """The fleetlm controller of this Ray cluster, created if absent, else given `yaml_text`
    (the deployment `config` came from) to apply in place; ValueError naming the fields when
    the running one cannot take it. Idempotent: a declarative deploy calls it on every build.
    It waits for no replica: the ingress answers 503 until one is ready. Returns the handle
    and whether this call created the controller (only then is the handle's token its own)."""
    if not ray.is_initialized():
        ray.init(namespace=NAMESPACE)
    if not _controller_exists():
        return start_cluster(config, min_healthy=0), True
    actor = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    try:
        message = ray.get(actor.apply_config.remote(yaml_text), timeout=60)
    except ray.exceptions.RayError as exc:
        cause = _cause(exc)
        raise ValueError(f"config: the running fleetlm controller refused it: {cause}") from None
    logger.info("fleetlm controller already running; %s", message)
    address = ray.get(actor.grpc_address.remote(), timeout=30)
    admin_url = ray.get(actor.admin_url.remote(), timeout=30)
    security = ray.get(actor.grpc_security.remote(), timeout=30)  # Ray's token guards this call
    # The running controller keeps the token it was started with.
    token = resolve_admin_token(config)
    return ClusterHandle(address, admin_url, token, [], config, security), False


def stop_cluster() -> None:
    """Stop this Ray cluster's fleetlm controller and every replica (a declarative deployment's
    teardown: `serve shutdown` stops the ingress, not the detached controller)."""
    _stop_controller()
    backend = RayBackend()
    for replica_id in backend.list_replicas():  # anything the controller missed
        backend.kill_replica(replica_id)


def _stop_controller(attempts: int = 20) -> None:
    """Ask the controller to stop its loop (retrying while Ray restarts it), then kill it."""
    try:
        handle = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:
        return
    for attempt in range(attempts):
        try:
            ray.get(handle.shutdown.remote(), timeout=60)
            break
        except ray.exceptions.ActorUnavailableError:
            time.sleep(0.5)  # restarting: its constructor runs again first
        except ray.exceptions.RayError as exc:
            logger.warning("controller shutdown (attempt %d): %s", attempt + 1, exc)
            break
    ray.kill(handle, no_restart=True)


def _cause(exc: BaseException) -> str:
    """The controller constructor's own error (e.g. its admin port is taken), not Ray's wrap."""
    cause = getattr(exc, "cause", None) or exc.__cause__
    while cause is not None and getattr(cause, "cause", None) is not None:
        cause = cause.cause
    return str(cause or exc).strip().splitlines()[-1]


def _controller_exists() -> bool:
    try:
        ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:
        return False
    return True


def _replica_infos(view: ClusterView) -> list[ReplicaInfo]:
    return [ReplicaInfo(r.replica_id, r.address, r.node_id, r.healthy) for r in view.replicas]
