"""The controller's gRPC service: handlers record state and run the dispatch policy; they never
issue commands to replicas (the reconciler does)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from actors.replica.wire import load_from_pb
from orchestrator.controller.state import ControllerState
from orchestrator.controller.wire import ViewUpdate, meta_from_pb, update_to_pb
from policies.cluster_view import RequestMeta
from policies.dispatch import DispatchDecision, DispatchPolicy, make_dispatch_policy
from protos import common_pb2, controller_pb2, controller_pb2_grpc

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActivePolicy:
    """Swapped as one reference, so a route never sees half of an update."""

    name: str
    params: dict[str, Any]
    policy: DispatchPolicy


@dataclass(frozen=True)
class PolicyChange:
    """A validated run-time config update: the dispatch policy, and a new replica count if any."""

    policy_name: str
    policy_params: dict[str, Any]
    replicas: int | None = None


def build_policy(name: str, params: dict[str, Any]) -> ActivePolicy:
    return ActivePolicy(name, dict(params), make_dispatch_policy(name, params))


class ControllerCore:
    def __init__(
        self,
        state: ControllerState,
        policy: ActivePolicy,
        parse_policy_update: Callable[[str], PolicyChange],
        report_interval_s: float,
        on_replicas: Callable[[int], None] = lambda count: None,
        status_extra: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.state = state
        self.policy = policy
        self._parse = parse_policy_update
        self._on_replicas = on_replicas
        self._status_extra = status_extra
        self.report_interval_s = report_interval_s
        self.watchers: set[asyncio.Event] = set()
        self.num_routes = 0
        self._view_msg: tuple[int, controller_pb2.ClusterViewMsg] | None = None
        state.on_change(self._wake_watchers)

    def _wake_watchers(self) -> None:
        for event in self.watchers:
            event.set()

    def route(self, meta: RequestMeta) -> tuple[DispatchDecision, str]:
        """Run the dispatch policy; counts the dispatch so the next decision sees it."""
        decision = self.policy.policy.choose(self.state.view(), meta)
        self.num_routes += 1
        if decision.replica_id is None:
            return decision, ""
        replica = self.state.view().get(decision.replica_id)
        self.state.note_dispatch(decision.replica_id)
        return decision, replica.address if replica is not None else ""

    def apply_config(self, yaml_text: str) -> tuple[bool, str]:
        """A valid policy file replaces the policy atomically; an invalid one changes nothing."""
        try:
            change = self._parse(yaml_text)
            new = build_policy(change.policy_name, change.policy_params)
        except ValueError as exc:
            logger.warning("config apply refused: %s", exc)
            return False, f"refused: {exc}"
        self.policy = new
        message = f"applied: dispatch policy {change.policy_name}"
        if change.replicas is not None:
            self._on_replicas(change.replicas)
            message += f", {change.replicas} replicas desired"
        self.state.touch()
        logger.info("config applied: %s %s", change.policy_name, change.policy_params)
        return True, message

    def view_update(self) -> ViewUpdate:
        return ViewUpdate(self.state.view(), self.policy.name, self.policy.params)

    def view_message(self) -> controller_pb2.ClusterViewMsg:
        """The streamed form, serialized once per generation however many routers watch."""
        generation = self.state.generation
        if self._view_msg is None or self._view_msg[0] != generation:
            self._view_msg = (generation, update_to_pb(self.view_update()))
        return self._view_msg[1]

    def status(self) -> dict[str, Any]:
        replicas = []
        for record in sorted(self.state.records.values(), key=lambda r: r.replica_id):
            load = record.load
            replicas.append(
                {
                    "replica_id": record.replica_id,
                    "registered": record.registered,
                    "healthy": record.healthy,
                    "address": load.address if load else "",
                    "node_id": load.node_id if load else "",
                    "running": load.running if load else 0,
                    "waiting": load.waiting if load else 0,
                    "kv_blocks_free": load.kv_blocks_free if load else 0,
                    "kv_blocks_total": load.kv_blocks_total if load else 0,
                    "inflight_dispatches": record.inflight,
                    "silent_s": round(self.state.silent_for(record.replica_id), 3),
                }
            )
        return {
            **self._status_extra(),
            "generation": self.state.generation,
            "policy": {"name": self.policy.name, "params": self.policy.params},
            "num_routes": self.num_routes,
            "replicas": replicas,
        }


class ControllerServicer(controller_pb2_grpc.ControllerServicer):
    def __init__(self, core: ControllerCore, watch_min_interval_s: float) -> None:
        self._core = core
        self._watch_min_interval_s = watch_min_interval_s

    async def Register(
        self, request: controller_pb2.RegisterRequest, context: object
    ) -> controller_pb2.RegisterReply:
        load = load_from_pb(request.load)
        accepted, reason = self._core.state.register(load)
        if accepted:
            logger.info("replica %s registered at %s", load.replica_id, load.address)
        return controller_pb2.RegisterReply(
            accepted=accepted, reason=reason, report_interval_s=self._core.report_interval_s
        )

    async def ReportLoad(
        self, request: common_pb2.LoadReport, context: object
    ) -> controller_pb2.ReportReply:
        return controller_pb2.ReportReply(known=self._core.state.report(load_from_pb(request)))

    async def Route(
        self, request: controller_pb2.RouteRequest, context: object
    ) -> controller_pb2.RouteReply:
        try:
            meta = meta_from_pb(request.meta)
        except ValueError as exc:
            return controller_pb2.RouteReply(found=False, reason=f"invalid:{exc}")
        decision, address = self._core.route(meta)
        return controller_pb2.RouteReply(
            found=decision.replica_id is not None,
            replica_id=decision.replica_id or "",
            address=address,
            reason=decision.reason,
        )

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

    async def ApplyConfig(
        self, request: controller_pb2.ApplyConfigRequest, context: object
    ) -> controller_pb2.ApplyConfigReply:
        ok, message = self._core.apply_config(request.yaml_text)
        return controller_pb2.ApplyConfigReply(ok=ok, message=message)

    async def Status(
        self, request: controller_pb2.StatusRequest, context: object
    ) -> controller_pb2.StatusReply:
        return controller_pb2.StatusReply(json=json.dumps(self._core.status()))
