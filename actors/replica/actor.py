"""The replica as a Ray actor: an engine loop, its gRPC server and a load reporter.

The class is plain, so this module stays testable without Ray. The controller never imports it
(it needs torch): it starts `orchestrator.controller.backend.ReplicaProcess`, which builds this
class by import path inside the replica actor's own process, with the deployment's resources.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid

from actors.common.config import ReplicaOptions, ReplicaSpec
from actors.common.locator import ControllerLocator
from actors.replica.engine_factory import build_engine
from actors.replica.reporter import ControllerLink, LoadReporter
from actors.replica.server import ReplicaServer

logger = logging.getLogger(__name__)


class ReplicaActor:
    def __init__(
        self,
        replica_id: str,
        spec: ReplicaSpec,
        controller_address: str | None,
        options: ReplicaOptions = ReplicaOptions(),
        node_id: str = "",
    ) -> None:
        logging.basicConfig(level=logging.INFO)
        node_id = node_id or _ray_node_id()
        self.replica_id = replica_id
        self.incarnation = uuid.uuid4().hex[:12]
        self._server = ReplicaServer(
            lambda: build_engine(spec),
            replica_id,
            bind_host=options.bind_host,
            advertise_host=options.advertise_host or _ray_node_ip(),
            port=options.port,
            security=options.security,
            node_id=node_id,
            incarnation=self.incarnation,
            migration=options.migration,
            stall_after_s=options.stall_after_s,
        )
        self._reporter: LoadReporter | None = None
        if controller_address is not None:
            self._reporter = LoadReporter(
                self._server.engine_loop.snapshot,
                ControllerLink(controller_address, options.security),
                options.report_interval_s,
                resolve=_locator(options),
                security=options.security,
            )
            self._reporter.tick()  # register before the first request can be routed here
            self._reporter.start()

    def address(self) -> str:
        return self._server.address

    def health(self) -> bool:
        return self._server.engine_loop.alive

    def stats(self) -> dict:
        return dataclasses.asdict(self._server.engine_loop.snapshot().load)

    def shutdown(self) -> None:
        if self._reporter is not None:
            self._reporter.stop()
        self._server.stop()


def _ray_node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"


def _ray_node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def _locator(options: ReplicaOptions) -> ControllerLocator | None:
    if options.controller_name is None:
        return None
    return ControllerLocator(options.controller_name, options.controller_namespace or "")
