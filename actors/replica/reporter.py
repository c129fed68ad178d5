"""Pushes the replica's load to the controller at a fixed interval and (re-)registers.

A controller that answers `known=False` has restarted and lost its state: the replica registers
again, which is how a restarted controller rebuilds its view. When the controller is unreachable
the replica keeps serving and asks `resolve` for the controller's (possibly new) address.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import grpc

from actors.common.config import GrpcSecurity
from actors.common.grpc_security import sync_channel
from actors.common.types import LoadReport
from actors.common.wire import report_to_pb
from actors.replica.loop import EngineStalled
from protos import controller_pb2, controller_pb2_grpc

logger = logging.getLogger(__name__)


class ControllerLink:
    """The replica's one wrapper around the controller's gRPC stub."""

    def __init__(
        self, address: str, security: GrpcSecurity | None = None, timeout_s: float = 2.0
    ) -> None:
        self.address = address
        self._security = security
        self._timeout_s = timeout_s
        self._channel = sync_channel(address, security)
        self._stub = controller_pb2_grpc.ControllerStub(self._channel)

    def register(self, report: LoadReport) -> bool:
        req = controller_pb2.RegisterRequest(report=report_to_pb(report))
        reply = self._stub.Register(req, timeout=self._timeout_s)
        if not reply.accepted:
            logger.warning("controller refused registration: %s", reply.reason)
        return reply.accepted

    def report(self, report: LoadReport) -> bool:
        """Returns whether the controller knows this replica."""
        return self._stub.ReportLoad(report_to_pb(report), timeout=self._timeout_s).known

    def close(self) -> None:
        self._channel.close()


class LoadReporter:
    def __init__(
        self,
        snapshot: Callable[[], LoadReport],
        link: ControllerLink,
        interval_s: float,
        resolve: Callable[[], str | None] | None = None,
        security: GrpcSecurity | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._link = link
        self._interval_s = interval_s
        self._resolve = resolve
        self._security = security
        self._registered = False
        self._failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-reporter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._link.close()

    def _run(self) -> None:
        # Event.wait paces the reports and wakes at once on stop().
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self._interval_s)

    def tick(self) -> None:
        """One report (or registration); never raises."""
        try:
            report = self._snapshot()
            if not self._registered or not self._link.report(report):
                self._registered = self._link.register(report)
            self._failures = 0
        except EngineStalled as exc:  # a wedged engine: silence takes it out of dispatch
            self._failures += 1
            if self._failures in (1, 10) or self._failures % 100 == 0:
                logger.warning("not reporting load: %s", exc)
        except grpc.RpcError as exc:
            self._registered = False
            self._failures += 1
            if self._failures in (1, 10) or self._failures % 100 == 0:
                logger.warning("load report to %s failed (%s)", self._link.address, exc.code())
            self._maybe_relocate()
        except Exception:
            logger.exception("load report failed")

    def _maybe_relocate(self) -> None:
        if self._resolve is None or self._failures % 3 != 0:
            return
        try:
            address = self._resolve()
        except Exception as exc:  # the controller may be restarting: try again later
            logger.info("controller lookup failed: %s", exc)
            return
        if address and address != self._link.address:
            logger.info("controller moved to %s", address)
            self._link.close()
            self._link = ControllerLink(address, self._security)
