"""ControllerHost: the controller's event-loop thread, its gRPC server, its admin HTTP API and the
reconciler, all on one asyncio loop (so they share the records without locks).

Plain Python (no Ray here): the Ray actor in actor.py wraps it, tests may run it in-process with
a fake backend and fake replica control clients.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import grpc

from actors.common.config import GrpcSecurity
from actors.common.control_client import ReplicaControlClient
from actors.common.grpc_security import add_port, aio_server
from orchestrator.admin.app import build_admin_app
from orchestrator.controller.adapters import AdapterCatalog
from orchestrator.controller.commander import ControlClient, ReplicaCommander
from orchestrator.controller.deployment import WILDCARD_HOSTS, ConfigUpdater
from orchestrator.controller.migrations import Migrations
from orchestrator.controller.placement import AdapterPlacer
from orchestrator.controller.reconciler import Reconciler, ReplicaBackend
from orchestrator.controller.service import ControllerCore, ControllerServicer
from orchestrator.controller.settings import ControllerSettings
from orchestrator.controller.state import ControllerState
from orchestrator.http_server import DirectHTTPServer
from protos import controller_pb2_grpc

logger = logging.getLogger(__name__)

STOP_WAIT_S = 10.0  # how long a shutdown waits for the reconciler tick under way


class ControllerHost:
    def __init__(
        self,
        settings: ControllerSettings,
        backend: ReplicaBackend,
        config: ConfigUpdater,
        advertise_host: str | None = None,
        connect: Callable[[str, GrpcSecurity | None], ControlClient] = ReplicaControlClient,
    ) -> None:
        self.settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="controller-loop")
        self._thread.daemon = True
        self._thread.start()
        self.state = ControllerState(settings.unhealthy_after_s)
        self.commander = ReplicaCommander(self.state, settings.security, connect=connect)
        self.migrations = Migrations(self.state, self.commander, lambda: self.settings)
        self.adapters = AdapterCatalog(self.state, self.commander, settings, lambda: config.current)
        self.placer = AdapterPlacer(
            self.state, self.commander, self.adapters.names, lambda: self.settings
        )
        self.core = ControllerCore(
            self.state,
            config,
            self.commander,
            self.migrations,
            self.adapters,
            settings.replica_options.report_interval_s,
            self.placer,
        )
        self._server = self.call(self._start_server())
        self.address = f"{advertise_host or settings.grpc_host}:{self._bound_port}"
        self.reconciler = Reconciler(
            self.state,
            backend,
            self.commander,
            self.migrations,
            lambda: self.adapters.settings_for_new(self.settings),
            lambda: self.core.desired_replicas,
            self.address,
            self.placer,
        )
        self._admin = self.call(self._start_admin())
        self.admin_url = (
            f"http://{_url_host(settings.admin_host, advertise_host)}:{self._admin.port}"
        )
        self._stop = asyncio.Event()
        self._reconcile_task = self.call(self._start_reconciler())
        logger.info("controller serving on %s, admin API on %s", self.address, self.admin_url)

    async def _start_server(self) -> grpc.aio.Server:
        server = aio_server(self.settings.security)
        servicer = ControllerServicer(self.core, self.settings.watch_min_interval_s)
        controller_pb2_grpc.add_ControllerServicer_to_server(servicer, server)
        bind = f"{self.settings.grpc_host}:{self.settings.grpc_port}"
        self._bound_port = add_port(server, bind, self.settings.security)
        if self._bound_port == 0:
            raise ValueError(f"server.controller_grpc_port: cannot bind {bind}")
        await server.start()
        return server

    async def _start_admin(self) -> DirectHTTPServer:
        app = build_admin_app(self.core, self.settings.admin_token_digest)
        host, port = self.settings.admin_host, self.settings.admin_port
        try:
            server = DirectHTTPServer(
                app, host, port, graceful_shutdown_s=1.0, reuse_port=False, name="admin"
            )
        except RuntimeError as exc:
            raise ValueError(f"server.admin_port: {exc}") from exc
        await server.start()
        return server

    async def _start_reconciler(self) -> asyncio.Task:
        self._stop = asyncio.Event()
        return asyncio.create_task(self.reconciler.run(self._stop))

    def call(self, coro: Coroutine) -> Any:
        """Run a coroutine on the controller's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)

    def replica_ids(self) -> list[str]:
        async def ids() -> list[str]:
            return sorted(self.state.records)

        return self.call(ids())

    def stop(self) -> None:
        """Stop the reconciler and the servers (idempotent)."""
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            self._stop.set()
            try:
                # The tick under way ends first (ticks are short); one stuck in a call to Ray
                # is cancelled rather than holding the shutdown.
                await asyncio.wait_for(self._reconcile_task, STOP_WAIT_S)
            except asyncio.TimeoutError:
                logger.warning("reconciler tick still running after %.0fs: cancelled", STOP_WAIT_S)
            await self.migrations.close()
            await self.placer.close()
            await self._admin.stop()
            await self._server.stop(0.5)
            await self.commander.close()

        self.call(shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def _url_host(bind_host: str, advertise_host: str | None) -> str:
    """What a browser dials for a server bound to `bind_host` (a wildcard: this node's IP)."""
    shown = bind_host
    if bind_host in WILDCARD_HOSTS:
        shown = advertise_host or "127.0.0.1"
    return f"[{shown}]" if ":" in shown else shown
