"""The controller's adapter placement: policies.adapters run each reconciler tick (every
placement interval), its decisions sent to replicas as PlaceAdapter commands.

Demand comes from the replicas' load reports (ReplicaLoad.adapter_requests, observed as they
arrive); residency from the same reports (adapters_resident). Each decision is an event
(`adapter_placed`, with the policy's reason and whether the replica applied it), and the
adapter listing of the admin API shows each adapter's request rate and holders.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from actors.common.commands import PlaceAdapter
from actors.common.types import LoadReport
from orchestrator.controller.commander import ReplicaCommander
from orchestrator.controller.events import EventKind
from orchestrator.controller.settings import ControllerSettings
from orchestrator.controller.state import ControllerState
from policies.adapters import AdapterDemand, Placement, PlacementState, plan_placement


class AdapterPlacer:
    def __init__(
        self,
        state: ControllerState,
        commander: ReplicaCommander,
        catalog: Callable[[], Iterable[str]],
        settings: Callable[[], ControllerSettings],
    ) -> None:
        self._state = state
        self._commander = commander
        self._catalog = catalog
        self._settings = settings
        params = settings().placement
        self._demand = AdapterDemand(params.window_s if params is not None else 30.0)
        self._plan = PlacementState()
        self._next_round = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    def observe(self, report: LoadReport) -> None:
        """A replica's load report: its per-adapter request counters."""
        identity = report.identity
        self._demand.observe(
            identity.replica_id,
            identity.incarnation,
            report.load.adapter_requests,
            time.monotonic(),
        )

    def rates(self) -> dict[str, float]:
        """Requests/s per adapter over the demand window (for the admin API)."""
        return self._demand.rates(time.monotonic())

    def round(self) -> list[Placement]:
        """(Each reconciler tick) plan and send this round's placements, if one is due."""
        settings = self._settings()
        params = settings.placement
        now = time.monotonic()
        if params is None or now < self._next_round:
            return []
        self._next_round = now + settings.placement_interval_s
        for rid in set(self._demand.replica_ids()) - self._state.records.keys():
            self._demand.forget_replica(rid)
        replicas = self._state.view().replicas
        plans = plan_placement(replicas, self._demand, self._catalog(), self._plan, now, params)
        for placement in plans:
            task = asyncio.ensure_future(self._apply(placement))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return plans

    async def _apply(self, p: Placement) -> None:
        result = await self._commander.send(p.replica_id, PlaceAdapter(p.adapter, p.resident))
        where = "onto the device" if p.resident else "off the device"
        outcome = "" if result.error is None else f" (not applied: {result.error})"
        self._state.events.add(
            EventKind.ADAPTER_PLACED,
            f"{p.adapter} {where}: {p.reason}{outcome}",
            p.replica_id,
            command_id=result.command_id,
            ok=result.error is None,
        )

    async def close(self) -> None:
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
