"""Router: routes on the ingress from the ClusterView the controller streams to it.

The dispatch policy runs locally on the latest view plus this router's own dispatches since each
replica's last report (so a burst spreads instead of herding onto the replica that looked idlest).
bench/control_plane.py measured this against asking the controller per request; see
docs/control-plane-notes.md. When the controller is unreachable the router keeps serving from its
last view with least_load, and reconnects (finding a restarted controller through `resolve`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from actors.common.config import GrpcSecurity
from orchestrator.controller.client import ControllerClient
from orchestrator.controller.wire import ViewUpdate
from policies.cluster_view import ClusterView, RequestMeta
from policies.dispatch import DispatchPolicy, make_dispatch_policy
from policies.live_view import LiveView

logger = logging.getLogger(__name__)

FALLBACK_POLICY = "least_load"


@dataclass(frozen=True)
class RouteResult:
    replica_id: str
    address: str
    reason: str = ""


@dataclass(frozen=True)
class RouteOutcome:
    """A routing decision with why: `result` None means refuse (429 if overloaded, else 503)."""

    result: RouteResult | None
    reason: str
    overloaded: bool = False


class Router:
    def __init__(
        self,
        controller_address: str,
        *,
        security: GrpcSecurity | None = None,
        resolve: Callable[[], str | None] | None = None,
        reconnect_s: float = 0.5,
    ) -> None:
        self._address = controller_address
        self._security = security
        self._resolve = resolve
        self._reconnect_s = reconnect_s
        self._update: ViewUpdate | None = None
        # The view plus this router's own dispatches and suspects, updated in place per decision.
        self._live: LiveView | None = None
        self._policy_key: tuple[str, str] | None = None
        self._policy: DispatchPolicy | None = None
        self._fallback: DispatchPolicy = make_dispatch_policy(FALLBACK_POLICY)
        self._since_report: dict[str, int] = {}  # dispatches since the replica's last report
        self._versions: dict[str, int] = {}
        # Replicas a request just failed on (version seen then): skipped until a newer report.
        self._suspects: dict[str, int] = {}
        self._connected = False
        self._offline = False
        self._first_view = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.num_updates = 0
        self.last_update_at = 0.0

    @classmethod
    def from_snapshot(cls, update: ViewUpdate) -> Router:
        """A router that decides on one fixed view with its policy, no controller (bench, sim)."""
        router = cls("offline:0")
        router._offline = True
        router.apply_update(update)
        return router

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self, wait_s: float = 10.0) -> None:
        """Start watching the controller; waits up to `wait_s` for the first view."""
        if self._task is None:
            self._task = asyncio.create_task(self._watch_forever())
        try:
            await asyncio.wait_for(self._first_view.wait(), wait_s)
        except asyncio.TimeoutError:
            logger.warning("no cluster view from %s after %.1fs", self._address, wait_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def view(self) -> ClusterView | None:
        return self._update.view if self._update is not None else None

    async def resolve_adapter(self, name: str, timeout_s: float = 120.0) -> str | None:
        """Ask the controller to serve LoRA adapter `name` (its adapters.resolve_dir): None when
        served, else why not ("" when there is nowhere to look)."""
        client = ControllerClient(self._address, self._security)
        try:
            return await client.resolve_adapter(name, timeout_s)
        finally:
            client.close()

    async def _watch_forever(self) -> None:
        while True:
            try:
                client = ControllerClient(self._address, self._security)
                try:
                    async for update in client.watch_updates(watcher_id="router"):
                        self._connected = True
                        self.apply_update(update)
                finally:
                    client.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the controller is down or moved: keep the last view
                if self._connected:
                    logger.warning("controller watch lost (%s); routing on the last view", exc)
            self._connected = False
            await asyncio.sleep(self._reconnect_s)  # paces reconnect attempts
            await self._relocate()

    async def _relocate(self) -> None:
        if self._resolve is None:
            return
        try:
            address = await asyncio.to_thread(self._resolve)
        except Exception as exc:
            logger.info("controller lookup failed: %s", exc)
            return
        if address and address != self._address:
            logger.info("controller moved to %s", address)
            self._address = address

    # ---- routing ---------------------------------------------------------------------------

    def apply_update(self, update: ViewUpdate) -> None:
        """Take a new view: replicas whose report is newer forget this router's dispatches."""
        for replica in update.view.replicas:
            if self._versions.get(replica.replica_id) != replica.version:
                self._versions[replica.replica_id] = replica.version
                self._since_report[replica.replica_id] = 0
        key = (update.policy_name, json.dumps(update.policy_params, sort_keys=True))
        if key != self._policy_key and update.policy_name:
            try:
                self._policy = make_dispatch_policy(update.policy_name, update.policy_params)
                self._policy_key = key
            except ValueError:
                logger.exception("controller sent an unusable policy; keeping the previous one")
        self._update = update
        live = LiveView(update.view)
        for replica_id, count in self._since_report.items():
            i = live.index.get(replica_id)
            if count and i is not None:
                live.add_inflight(i, count)
        for replica_id, version in list(self._suspects.items()):
            current = self._versions.get(replica_id)
            if current is None or current != version:
                del self._suspects[replica_id]  # gone from the view, or it reported since
            elif replica_id in live.index:
                live.set_healthy(live.index[replica_id], False)
        self._live = live
        self.num_updates += 1
        self.last_update_at = time.monotonic()
        self._first_view.set()

    def decide_now(self, meta: RequestMeta) -> RouteOutcome:
        live = self._live
        if live is None:
            return RouteOutcome(None, "no cluster view yet")
        policy = self._policy if (self._connected or self._offline) and self._policy else None
        decision = (policy or self._fallback).decide(live, meta)
        replica_id = decision.replica_id
        if replica_id is None:
            return RouteOutcome(None, decision.reason, decision.overloaded)
        i = live.index[replica_id]
        self._since_report[replica_id] = self._since_report.get(replica_id, 0) + 1
        live.add_inflight(i, 1)
        return RouteOutcome(RouteResult(replica_id, live.replicas[i].address, decision.reason), "")

    def report_failure(self, replica_id: str) -> None:
        """A request just lost this replica: stop routing to it until it reports again.

        Without this, a dead replica keeps looking idle (least load) until the controller marks
        it unhealthy, and every request routed meanwhile fails over once.
        """
        self._suspects[replica_id] = self._versions.get(replica_id, 0)
        live = self._live
        if live is not None and replica_id in live.index:
            live.set_healthy(live.index[replica_id], False)

    async def decide(self, meta: RequestMeta) -> RouteOutcome:
        return self.decide_now(meta)

    async def route(self, meta: RequestMeta) -> RouteResult | None:
        return self.decide_now(meta).result

    def replica_id_at(self, address: str) -> str | None:
        """The replica serving at `address` in the current view (where a request migrated)."""
        view = self.view
        if view is None:
            return None
        return next((r.replica_id for r in view.replicas if r.address == address), None)

    def release(self, replica_id: str) -> None:
        """A request routed here ended before the replica's next report counted it."""
        count = self._since_report.get(replica_id, 0)
        if count > 0:
            self._since_report[replica_id] = count - 1
            live = self._live
            if live is not None and replica_id in live.index:
                live.add_inflight(live.index[replica_id], -1)

    def forget_dispatches(self) -> None:
        """Drop every in-flight count (what a router without them would see; for comparisons)."""
        self._since_report.clear()
        if self._update is not None:
            self.apply_update(self._update)

    def stats(self) -> dict[str, Any]:
        return {
            "connected": self._connected,
            "controller": self._address,
            "policy": self._policy_key[0] if self._policy_key else None,
            "num_updates": self.num_updates,
            "since_report": dict(self._since_report),
        }
