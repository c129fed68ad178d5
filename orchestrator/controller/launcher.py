"""start_cluster: join or start Ray, create the controller actor, wait for healthy replicas."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from actors.replica.actor import ControllerLocator
from orchestrator.controller.actor import ControllerActor
from orchestrator.controller.backend import RayBackend
from orchestrator.controller.client import ControllerClient
from orchestrator.controller.deployment import settings_from_config, tls_from_config
from orchestrator.controller.settings import CONTROLLER_NAME, NAMESPACE
from policies.cluster_view import ClusterView
from policies.config import DeploymentConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplicaInfo:
    replica_id: str
    address: str
    node_id: str
    healthy: bool


@dataclass
class ClusterHandle:
    controller_address: str
    replicas: list[ReplicaInfo]
    config: DeploymentConfig
    owns_ray: bool = False
    _closed: bool = field(default=False, repr=False)

    def client(self) -> ControllerClient:
        return ControllerClient(self.controller_address, tls_from_config(self.config))

    def locator(self) -> ControllerLocator:
        """Finds the controller again after a restart (for Router(resolve=...))."""
        return ControllerLocator(CONTROLLER_NAME, NAMESPACE)

    def status(self) -> dict[str, Any]:
        client = self.client()
        try:
            return client.status()
        finally:
            client.close()

    def shutdown(self) -> None:
        """Stop the controller and every replica; shut Ray down if this call started it."""
        if self._closed:
            return
        self._closed = True
        _stop_controller()
        backend = RayBackend()
        for replica_id in backend.list_replicas():  # anything the controller missed
            backend.kill_replica(replica_id)
        if self.owns_ray:
            ray.shutdown()


def start_cluster(
    config: DeploymentConfig,
    address: str | None = None,
    *,
    custom_resources: dict[str, float] | None = None,
    wait_s: float = 300.0,
    min_healthy: int = 1,
) -> ClusterHandle:
    """Start the controller (which creates the replicas) and wait for `min_healthy` replicas.

    `custom_resources`: Ray resources each replica needs, e.g. to place one per node.
    """
    owns_ray = not ray.is_initialized()
    if owns_ray:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=True)
    if _controller_exists():
        raise ValueError(
            "cluster: a fleetlm controller already runs in this Ray cluster "
            "(see `fleetlm status`; shut it down before starting another)"
        )
    settings = settings_from_config(config, custom_resources=custom_resources)
    controller = (
        ray.remote(ControllerActor)
        .options(
            name=CONTROLLER_NAME,
            namespace=NAMESPACE,
            lifetime="detached",
            max_restarts=-1,
            num_cpus=0,
        )
        .remote(config, settings)
    )
    controller_address = ray.get(controller.grpc_address.remote(), timeout=120)
    handle = ClusterHandle(controller_address, [], config, owns_ray)
    client = handle.client()
    try:
        view = client.wait_for_replicas(min(min_healthy, settings.replicas), wait_s)
    except BaseException:
        client.close()
        handle.shutdown()
        raise
    client.close()
    handle.replicas = _replica_infos(view)
    logger.info("controller at %s, %d replicas healthy", controller_address, len(view.healthy()))
    return handle


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


def _controller_exists() -> bool:
    try:
        ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:
        return False
    return True


def _replica_infos(view: ClusterView) -> list[ReplicaInfo]:
    return [ReplicaInfo(r.replica_id, r.address, r.node_id, r.healthy) for r in view.replicas]
