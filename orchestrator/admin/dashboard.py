"""The admin dashboard: static pages (orchestrator/admin/static/) over the admin API, and the
server-sent event stream that keeps them live.

The page adds no second source of truth: every number on it is an admin API answer, and the
stream's snapshots are built by the same route bodies (`AdminRoutes`) that answer
`/admin/v1/replicas`, `/migrations`, `/adapters` and `/events`. A browser signs in once with the
URL `fleetlm serve` prints (`/?token=...`): the admin middleware turns the token into an HttpOnly,
SameSite=Strict cookie and drops it from the address (orchestrator/admin/session.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse

from orchestrator.admin import PREFIX
from orchestrator.api.errors import APIError

if TYPE_CHECKING:
    from orchestrator.admin.app import AdminRoutes

STATIC = Path(__file__).parent / "static"
ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
STREAM_EVERY_S = 1.0  # a snapshot at least this often (load numbers move between changes)
STREAM_MIN_GAP_S = 0.25  # and at most this often, however fast the state changes
STREAM_MIGRATIONS = 50  # the newest migrations in each snapshot
STREAM_EVENTS = 200  # new events per snapshot, at most


def add_dashboard(app: FastAPI, api: AdminRoutes, changed: set[asyncio.Event]) -> None:
    """The page, its assets and the stream; `changed` is where the controller's state wakes
    watchers (ControllerCore.watchers), so a snapshot follows a change at once."""

    @app.get("/")
    async def root() -> RedirectResponse:
        return RedirectResponse("/dashboard/", status_code=303)

    @app.get("/dashboard/")
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/dashboard/{asset}")
    async def asset(asset: str) -> FileResponse:
        if asset not in ASSETS:
            raise APIError(404, f"no dashboard asset {asset!r}", code="not_found")
        return FileResponse(STATIC / asset, media_type=ASSETS[asset])

    @app.get(f"{PREFIX}/stream")
    async def stream(request: Request, after: int = 0) -> StreamingResponse:
        """Server-sent events: a `snapshot` per change (at most every STREAM_MIN_GAP_S) or
        every STREAM_EVERY_S, with replicas, migrations, adapters and the events after `after`."""
        return StreamingResponse(
            _snapshots(api, request, changed, after),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )


async def _snapshots(
    api: AdminRoutes, request: Request, changed: set[asyncio.Event], after: int
) -> AsyncIterator[bytes]:
    wake = asyncio.Event()
    changed.add(wake)
    try:
        while not await request.is_disconnected():
            wake.clear()
            snap = await snapshot(api, after)
            if snap["events"]:
                after = snap["events"][-1]["seq"]
            yield f"event: snapshot\ndata: {json.dumps(snap)}\n\n".encode()
            await asyncio.sleep(STREAM_MIN_GAP_S)  # pacing: a burst of changes is one snapshot
            try:
                await asyncio.wait_for(wake.wait(), STREAM_EVERY_S - STREAM_MIN_GAP_S)
            except asyncio.TimeoutError:
                pass
    finally:
        changed.discard(wake)


async def snapshot(api: AdminRoutes, after: int) -> dict[str, Any]:
    """One snapshot: exactly what the admin routes answer now."""
    return {
        **await api.replicas(),
        **await api.migrations(STREAM_MIGRATIONS),
        **await api.adapters(),
        **await api.events(after, STREAM_EVENTS),
    }
