"""ControllerHost: the controller's event-loop thread, its gRPC server and the reconciler.

Plain Python (no Ray here): the Ray actor in actor.py wraps it, tests may run it in-process with
a Fake backend.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import grpc

from actors.replica.tls import add_port
from orchestrator.controller.reconciler import Reconciler, ReplicaBackend
from orchestrator.controller.service import (
    ControllerCore,
    ControllerServicer,
    PolicyChange,
    build_policy,
)
from orchestrator.controller.settings import ControllerSettings
from orchestrator.controller.state import ControllerState
from protos import controller_pb2_grpc

logger = logging.getLogger(__name__)


class ControllerHost:
    def __init__(
        self,
        settings: ControllerSettings,
        backend: ReplicaBackend,
        parse_policy_update: Callable[[str], PolicyChange],
        advertise_host: str | None = None,
    ) -> None:
        self.settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="controller-loop")
        self._thread.daemon = True
        self._thread.start()
        policy = build_policy(settings.policy_name, settings.policy_params)
        self.state = ControllerState(settings.unhealthy_after_s)
        self.core = ControllerCore(
            self.state,
            policy,
            parse_policy_update,
            settings.replica_options.report_interval_s,
            on_replicas=self._set_desired,
            status_extra=self._status_extra,
        )
        self._server = self.call(self._start_server())
        port = self._bound_port
        self.address = f"{advertise_host or settings.grpc_host}:{port}"
        self.reconciler = Reconciler(self.state, backend, lambda: self.settings, self.address)
        self._stop = asyncio.Event()
        self._reconcile_task = self.call(self._start_reconciler())
        logger.info("controller serving on %s", self.address)

    def _set_desired(self, count: int) -> None:
        self.settings = dataclasses.replace(self.settings, replicas=count)

    async def _start_server(self) -> grpc.aio.Server:
        server = grpc.aio.server()
        servicer = ControllerServicer(self.core, self.settings.watch_min_interval_s)
        controller_pb2_grpc.add_ControllerServicer_to_server(servicer, server)
        bind = f"{self.settings.grpc_host}:{self.settings.grpc_port}"
        self._bound_port = add_port(server, bind, self.settings.tls)
        if self._bound_port == 0:
            raise ValueError(f"server.controller_grpc_port: cannot bind {bind}")
        await server.start()
        return server

    async def _start_reconciler(self) -> asyncio.Task:
        self._stop = asyncio.Event()
        return asyncio.create_task(self.reconciler.run(self._stop))

    def call(self, coro: Coroutine) -> Any:
        """Run a coroutine on the controller's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)

    def _status_extra(self) -> dict[str, Any]:
        reconciler = getattr(self, "reconciler", None)  # None while the host is starting
        return {
            "address": getattr(self, "address", ""),
            "desired_replicas": self.settings.replicas,
            "reconciler": {
                "ticks": reconciler.ticks if reconciler else 0,
                "failed_ticks": reconciler.failed_ticks if reconciler else 0,
                "start_failures": reconciler.start_failures if reconciler else 0,
            },
        }

    def status(self) -> dict[str, Any]:
        async def snapshot() -> dict[str, Any]:
            return self.core.status()

        return self.call(snapshot())

    def replica_ids(self) -> list[str]:
        async def ids() -> list[str]:
            return sorted(self.state.records)

        return self.call(ids())

    def stop(self) -> None:
        """Stop the reconciler and the server (idempotent)."""
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            self._stop.set()
            await self._reconcile_task
            await self._server.stop(0.5)

        self.call(shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
