"""The controller's core and its gRPC service.

`ControllerCore` holds what the controller knows and wants: the replica records (state.py), the
deployment config (the desired replica count and the dispatch policy routers run), the events.
Its methods record desired state and answer questions; acting on the desired state is the
reconciler's job, except where an operator waits for an answer (a cordon is also sent at once).
The gRPC servicer (replicas register and report; routers watch the view) and the admin API
(orchestrator/admin) are thin layers over it. Everything runs on the controller's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import yaml

from actors.common.commands import CommandResult
from actors.common.errors import ErrorKind, ReplicaError
from actors.common.types import LoadReport
from actors.common.wire import report_from_pb
from orchestrator.config.errors import ConfigError
from orchestrator.controller.adapters import AdapterCatalog
from orchestrator.controller.commander import ReplicaCommander
from orchestrator.controller.deployment import ConfigUpdater
from orchestrator.controller.events import EventKind
from orchestrator.controller.migrations import Migrations
from orchestrator.controller.placement import AdapterPlacer
from orchestrator.controller.reconciler import apply_cordon, set_drain
from orchestrator.controller.state import ControllerState, ReplicaRecord
from orchestrator.controller.wire import ViewUpdate, update_to_pb
from protos import common_pb2, controller_pb2, controller_pb2_grpc

logger = logging.getLogger(__name__)


class ReplicaNotFound(LookupError):
    pass


class StateConflict(RuntimeError):
    """The replica's state forbids what was asked (e.g. uncordoning one that is draining)."""


class ControllerCore:
    def __init__(
        self,
        state: ControllerState,
        config: ConfigUpdater,
        commander: ReplicaCommander,
        migrations: Migrations,
        adapters: AdapterCatalog,
        report_interval_s: float,
        placer: AdapterPlacer | None = None,
    ) -> None:
        self.state = state
        self.events = state.events
        self.config = config
        self.commander = commander
        self.migrations = migrations
        self.adapters = adapters
        self.placer = placer
        self.report_interval_s = report_interval_s
        self.watchers: set[asyncio.Event] = set()
        self._view_msg: tuple[int, controller_pb2.ClusterViewMsg] | None = None
        state.on_change(self._wake_watchers)

    def observe(self, report: LoadReport) -> None:
        """A report the state took: what the adapter catalog and placement learn from it."""
        self.adapters.observe(report)
        if self.placer is not None:
            self.placer.observe(report)

    def adapter_listing(self) -> list[dict[str, Any]]:
        """The catalog, each adapter with its request rate (placement's demand)."""
        rates = self.placer.rates() if self.placer is not None else {}
        return [
            {**entry, "requests_per_s": round(rates.get(entry["name"], 0.0), 3)}
            for entry in self.adapters.listing()
        ]

    def _wake_watchers(self) -> None:
        for event in self.watchers:
            event.set()

    # ---- desired state ---------------------------------------------------------------------

    @property
    def desired_replicas(self) -> int:
        return self.config.current.replicas.initial

    @property
    def policy_name(self) -> str:
        return self.config.current.dispatch.policy

    def policy_params(self) -> dict[str, Any]:
        return self.config.current.dispatch_params()

    def apply_config(self, yaml_text: str) -> str:
        """A valid file replaces the policy and the replica count atomically; raises
        ConfigError (nothing changes) naming every problem."""
        try:
            self.config(yaml_text)
        except ConfigError as exc:
            self.events.add(EventKind.CONFIG_REFUSED, str(exc).splitlines()[0])
            raise
        n = self.desired_replicas
        name = self.policy_name
        message = f"applied: dispatch policy {name}, {n} replica{'s' * (n != 1)} desired"
        self.events.add(EventKind.CONFIG_APPLIED, message)
        self.state.touch()
        return message

    def scale(self, replicas: int) -> str:
        """The desired replica count, as `replicas.count` in the config (ConfigError if bad)."""
        return self.apply_config(yaml.safe_dump({"replicas": {"count": replicas}}))

    def config_yaml(self) -> str:
        return self.config.yaml()

    async def cordon(self, replica_id: str, cordoned: bool) -> CommandResult:
        """Record the operator's cordon and send it now; the reconciler re-sends it until the
        replica follows (e.g. after a restart)."""
        record = self.record(replica_id)
        if not cordoned and record.stop_when_empty:
            raise StateConflict(
                f"replica {replica_id} is draining for scale-in; scale out to keep it"
            )
        if not cordoned and record.draining:
            set_drain(self.state, record, False)  # uncordon ends an operator's drain too
        was = record.wants_cordon
        record.cordoned_by_operator = cordoned
        if record.wants_cordon != was:
            record.cordon_epoch += 1
        self.state.touch(record)
        return await self._apply_cordon(record)

    async def drain(self, replica_id: str) -> CommandResult:
        """Empty a replica: it takes no new request, and its requests move to others by live
        migration (the reconciler keeps at it); it reads "drained" once it holds none."""
        record = self.record(replica_id)
        if not record.draining:
            set_drain(self.state, record, True)
        return await self._apply_cordon(record)

    async def _apply_cordon(self, record: ReplicaRecord) -> CommandResult:
        if record.report is None:
            later = ReplicaError(ErrorKind.UNAVAILABLE, "not registered yet: applied once it is")
            return CommandResult("", error=later)
        return await apply_cordon(self.commander, record)

    # ---- questions -------------------------------------------------------------------------

    def record(self, replica_id: str) -> ReplicaRecord:
        record = self.state.records.get(replica_id)
        if record is None:
            raise ReplicaNotFound(f"no replica {replica_id!r}")
        return record

    def view_update(self) -> ViewUpdate:
        cfg = self.config.current  # one read: the name and its params from the same file
        return ViewUpdate(self.state.view(), cfg.dispatch.policy, cfg.dispatch_params())

    def view_message(self) -> controller_pb2.ClusterViewMsg:
        """The streamed form, serialized once per generation however many routers watch."""
        generation = self.state.generation
        if self._view_msg is None or self._view_msg[0] != generation:
            self._view_msg = (generation, update_to_pb(self.view_update()))
        return self._view_msg[1]


class ControllerServicer(controller_pb2_grpc.ControllerServicer):
    def __init__(self, core: ControllerCore, watch_min_interval_s: float) -> None:
        self._core = core
        self._watch_min_interval_s = watch_min_interval_s

    async def Register(
        self, request: controller_pb2.RegisterRequest, context: object
    ) -> controller_pb2.RegisterReply:
        report = report_from_pb(request.report)
        accepted, reason = self._core.state.register(report)
        if accepted:
            self._core.observe(report)
        return controller_pb2.RegisterReply(
            accepted=accepted, reason=reason, report_interval_s=self._core.report_interval_s
        )

    async def ReportLoad(
        self, request: common_pb2.LoadReport, context: object
    ) -> controller_pb2.ReportReply:
        report = report_from_pb(request)
        known = self._core.state.report(report)
        if known:
            self._core.observe(report)
        return controller_pb2.ReportReply(known=known)

    async def ResolveAdapter(
        self, request: controller_pb2.ResolveAdapterRequest, context: object
    ) -> controller_pb2.ResolveAdapterReply:
        reason = await self._core.adapters.resolve(request.name)
        return controller_pb2.ResolveAdapterReply(served=reason is None, reason=reason or "")

    async def WatchClusterView(
        self, request: controller_pb2.WatchRequest, context: object
    ) -> AsyncIterator[controller_pb2.ClusterViewMsg]:
        changed = asyncio.Event()
        self._core.watchers.add(changed)
        try:
            while True:
                changed.clear()
                yield self._core.view_message()
                await changed.wait()
                # Coalesce a burst of reports into one message per interval.
                await asyncio.sleep(self._watch_min_interval_s)
        finally:
            self._core.watchers.discard(changed)
