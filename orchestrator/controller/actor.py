"""The controller as one named, detached, restartable Ray actor.

Ray restarts it after a crash with the same arguments; it starts empty, adopts the replica actors
it finds, and those re-register when their reports are refused.
"""

from __future__ import annotations

import logging

from actors.common.config import GrpcSecurity
from orchestrator.config.load import DeploymentConfig
from orchestrator.controller.backend import RayBackend
from orchestrator.controller.deployment import ConfigUpdater, advertised_host
from orchestrator.controller.events import EventKind
from orchestrator.controller.host import ControllerHost
from orchestrator.controller.settings import ControllerSettings

logger = logging.getLogger(__name__)


class ControllerActor:
    def __init__(self, config: DeploymentConfig, settings: ControllerSettings) -> None:
        logging.basicConfig(level=logging.INFO)
        self._backend = RayBackend()
        advertise = advertised_host(settings.grpc_host) or self._backend.node_ip()
        self._host = ControllerHost(settings, self._backend, ConfigUpdater(config), advertise)

    def grpc_address(self) -> str:
        return self._host.address

    def grpc_security(self) -> GrpcSecurity:
        """What a gRPC client of this deployment needs: TLS files and the shared secret (an
        ingress built by a redeploy gets it here; Ray's token auth guards the call)."""
        return self._host.settings.security

    def admin_url(self) -> str:
        """The admin API's base URL (http://HOST:PORT); routes are under /admin/v1/."""
        return self._host.admin_url

    def start_failures(self) -> list[str]:
        """The replicas' start failures so far (event messages, oldest first)."""

        async def failures() -> list[str]:
            events = self._host.state.events.since(0, 1000)
            return [e.message for e in events if e.kind is EventKind.REPLICA_START_FAILED]

        return self._host.call(failures())

    def apply_config(self, yaml_text: str) -> str:
        """A redeploy's file applied in place, as `fleetlm config apply` does (ConfigError,
        nothing changed, when a field cannot change while running)."""

        async def apply() -> str:
            return self._host.core.apply_config(yaml_text)

        return self._host.call(apply())

    def shutdown(self) -> None:
        """Stop the control loop and remove every replica (the cluster is going away)."""
        replica_ids = self._host.replica_ids()
        self._host.stop()
        for replica_id in set(replica_ids) | set(self._backend.list_replicas()):
            self._backend.kill_replica(replica_id)
