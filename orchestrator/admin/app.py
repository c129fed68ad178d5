"""The admin HTTP API: `/admin/v1/...` on the controller's admin port, the one surface that the
CLI, the dashboard and scripts use to see and steer the fleet.

Transport only: every answer is derived from the controller's core (orchestrator/controller/
service.py) at the moment it is asked; nothing here keeps state. It runs on the controller's
event loop, so handlers read the records directly. Every route needs the admin token: a bearer
header, or the browser session cookie (orchestrator/admin/session.py says how, and how
cross-site requests are refused). Errors have the OpenAI shape `{"error": {"message", ...}}`.

    GET  /admin/v1/                          this list of routes
    GET  /admin/v1/replicas                  replicas: state, node, address, pid, load, uptime
    GET  /admin/v1/replicas/{id}
    POST /admin/v1/replicas/{id}/cordon      take no new requests (running ones finish)
    POST /admin/v1/replicas/{id}/uncordon
    POST /admin/v1/replicas/{id}/drain       its requests move away by live migration
    POST /admin/v1/scale                     {"replicas": N}
    POST /admin/v1/migrate                   {"request_id", "target_replica"?}: answers when done
    GET  /admin/v1/migrations                the most recent migrations, newest last
    GET  /admin/v1/requests                  every running/waiting request, with its replica
    GET  /admin/v1/requests/{id}
    POST /admin/v1/requests/{id}/abort
    GET  /admin/v1/events?after=SEQ&limit=N  newest last
    GET  /admin/v1/config                    the running deployment YAML (secrets hidden)
    POST /admin/v1/config                    YAML text (or {"yaml": ...}): validate and apply
    GET  /admin/v1/adapters                  LoRA adapters: path, replicas serving, on device
    POST /admin/v1/adapters                  {"lora_name", "lora_path"}: load on every replica
    DELETE /admin/v1/adapters/{name}         unload (requests in flight finish first)
    GET  /admin/v1/stream                    server-sent snapshots of the above (the dashboard)
    GET  /dashboard/                         the dashboard (orchestrator/admin/dashboard.py)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors.common.commands import Abort, CommandResult, RequestInfo
from orchestrator.admin import PREFIX, session
from orchestrator.admin.dashboard import add_dashboard
from orchestrator.admin.token import token_matches
from orchestrator.api import errors
from orchestrator.api.errors import APIError
from orchestrator.config.errors import ConfigError
from orchestrator.controller.adapters import AdapterRefused
from orchestrator.controller.events import Event
from orchestrator.controller.migrations import MigrationRecord, MigrationRefused
from orchestrator.controller.service import ControllerCore, ReplicaNotFound, StateConflict
from orchestrator.controller.state import ReplicaRecord
from orchestrator.metrics.controller import metrics_route
from policies.cluster_view import LOAD_FIELDS

MAX_BODY_BYTES = 1 << 20
# Load fields left out of the replica JSON: a cache summary for routers, not for people.
_NOT_SHOWN = frozenset({"prefix_hashes"})


def build_admin_app(core: ControllerCore, token_digest: str) -> FastAPI:
    app = FastAPI(title="fleetlm admin", docs_url=None, redoc_url=None, openapi_url=None)
    api = AdminRoutes(core)

    @app.middleware("http")
    async def require_token(request: Request, call_next: Any) -> Any:
        cred = session.presented(request)
        if not token_matches(cred.token, token_digest):
            return _error(APIError(401, "missing or invalid admin token", code="invalid_token"))
        why = session.refusal(request, cred)
        if why is not None:
            return _error(APIError(403, why, code="forbidden"))
        if session.wants_page(request, cred):
            return session.sign_in(request, cred.token)
        try:
            return await call_next(request)
        except APIError as exc:  # raised by a route body (FastAPI does not catch these)
            return _error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(APIError(exc.status_code, str(exc.detail)))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # A query or path parameter of the wrong type (?limit=abc): name it, no pydantic dump.
        first = exc.errors()[0] if exc.errors() else {}
        field = str(first.get("loc", ("", "request"))[-1])
        return _error(errors.invalid(field, str(first.get("msg", "invalid value")).lower()))

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error(exc)

    app.get(f"{PREFIX}/replicas")(api.replicas)
    app.get(f"{PREFIX}/replicas/{{replica_id}}")(api.replica)
    app.post(f"{PREFIX}/replicas/{{replica_id}}/cordon")(api.cordon)
    app.post(f"{PREFIX}/replicas/{{replica_id}}/uncordon")(api.uncordon)
    app.post(f"{PREFIX}/replicas/{{replica_id}}/drain")(api.drain)
    app.post(f"{PREFIX}/scale")(api.scale)
    app.post(f"{PREFIX}/migrate")(api.migrate)
    app.get(f"{PREFIX}/migrations")(api.migrations)
    app.get(f"{PREFIX}/requests")(api.requests)
    app.get(f"{PREFIX}/requests/{{request_id}}")(api.request)
    app.post(f"{PREFIX}/requests/{{request_id}}/abort")(api.abort)
    app.get(f"{PREFIX}/events")(api.events)
    app.get(f"{PREFIX}/config")(api.config)
    app.post(f"{PREFIX}/config")(api.apply_config)
    app.get(f"{PREFIX}/adapters")(api.adapters)
    app.post(f"{PREFIX}/adapters")(api.load_adapter)
    app.delete(f"{PREFIX}/adapters/{{name:path}}")(api.unload_adapter)
    app.get("/metrics")(metrics_route(core))  # Prometheus (docs/metrics.md): token too

    add_dashboard(app, api, core.watchers)

    @app.get(f"{PREFIX}/")
    async def index() -> dict[str, Any]:
        """What the printed admin URL opens: the routes, as registered."""
        routes = [r for r in app.routes if isinstance(r, APIRoute)]
        return {"routes": sorted(f"{m} {r.path}" for r in routes for m in r.methods)}

    return app


class AdminRoutes:
    """The route bodies; each returns plain JSON-able data or raises APIError."""

    def __init__(self, core: ControllerCore) -> None:
        self._core = core

    # ---- replicas --------------------------------------------------------------------------

    async def replicas(self) -> dict[str, Any]:
        records = sorted(self._core.state.records.values(), key=lambda r: r.replica_id)
        return {
            "replicas": [replica_json(r) for r in records],
            "desired_replicas": self._core.desired_replicas,
            "policy": {"name": self._core.policy_name, "params": self._core.policy_params()},
        }

    async def replica(self, replica_id: str) -> dict[str, Any]:
        return {"replica": replica_json(self._record(replica_id))}

    async def cordon(self, replica_id: str) -> dict[str, Any]:
        return await self._set_cordon(replica_id, True)

    async def uncordon(self, replica_id: str) -> dict[str, Any]:
        return await self._set_cordon(replica_id, False)

    async def drain(self, replica_id: str) -> dict[str, Any]:
        return await self._set_cordon(replica_id, True, drain=True)

    async def _set_cordon(
        self, replica_id: str, cordoned: bool, drain: bool = False
    ) -> dict[str, Any]:
        try:
            if drain:
                result = await self._core.drain(replica_id)
            else:
                result = await self._core.cordon(replica_id, cordoned)
        except ReplicaNotFound as exc:
            raise APIError(404, str(exc), code="replica_not_found") from exc
        except StateConflict as exc:
            raise APIError(409, str(exc), code="conflict") from exc
        # The desired state is recorded whatever the replica answered: the controller keeps
        # sending it until the replica follows.
        return {"replica": replica_json(self._record(replica_id)), "command": command_json(result)}

    async def scale(self, request: Request) -> dict[str, Any]:
        body = await _json_body(request)
        count = body.get("replicas") if isinstance(body, dict) else None
        if type(count) is not int or count < 0:
            raise errors.invalid("replicas", f"must be an integer >= 0, got {count!r}")
        try:
            message = self._core.scale(count)
        except ConfigError as exc:
            raise _config_error(exc) from exc
        return {"desired_replicas": self._core.desired_replicas, "message": message}

    async def migrate(self, request: Request) -> dict[str, Any]:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise errors.invalid("body", "must be a JSON object")
        request_id, target = body.get("request_id"), body.get("target_replica")
        if not isinstance(request_id, str) or not request_id:
            raise errors.invalid("request_id", "must be a non-empty string")
        if target is not None and not isinstance(target, str):
            raise errors.invalid("target_replica", "must be a replica id (string) or absent")
        try:
            moved = await self._core.migrations.migrate(request_id, target)
        except MigrationRefused as exc:
            raise APIError(errors.STATUS_OF[exc.kind], str(exc), code="migration_refused") from exc
        return migration_json(moved)

    async def migrations(self, limit: int = 100) -> dict[str, Any]:
        recent = list(self._core.migrations.recent)[-_positive_limit(limit) :]
        return {"migrations": [migration_json(m) for m in recent]}

    def _record(self, replica_id: str) -> ReplicaRecord:
        try:
            return self._core.record(replica_id)
        except ReplicaNotFound as exc:
            raise APIError(404, str(exc), code="replica_not_found") from exc

    # ---- requests --------------------------------------------------------------------------

    async def requests(self) -> dict[str, Any]:
        found, unreachable = await self._core.commander.list_requests()
        now = time.time()
        return {
            "requests": [request_json(replica_id, info, now) for replica_id, info in found],
            "unreachable": unreachable,
        }

    async def request(self, request_id: str) -> dict[str, Any]:
        replica_id, info = await self._find_request(request_id)
        return {"request": request_json(replica_id, info, time.time())}

    async def abort(self, request_id: str) -> dict[str, Any]:
        replica_id, _ = await self._find_request(request_id)
        result = await self._core.commander.send(replica_id, Abort(request_id))
        if result.error is not None:
            raise errors.from_replica_error(result.error)
        return {"request": request_id, "replica": replica_id, "command": command_json(result)}

    async def _find_request(self, request_id: str) -> tuple[str, RequestInfo]:
        found = await self._core.commander.find_request(request_id)
        if found is not None:
            return found
        raise APIError(404, f"no running or waiting request {request_id!r}", code="not_found")

    # ---- events and config -----------------------------------------------------------------

    async def events(self, after: int = 0, limit: int = 200) -> dict[str, Any]:
        events = self._core.events.since(after, _positive_limit(limit))
        return {"events": [event_json(e) for e in events]}

    async def config(self) -> dict[str, Any]:
        return {"yaml": self._core.config_yaml(), "desired_replicas": self._core.desired_replicas}

    async def apply_config(self, request: Request) -> dict[str, Any]:
        raw = await _body(request)
        text = raw.decode("utf-8", errors="replace")
        if "json" in request.headers.get("content-type", ""):
            body = _parse_json(raw)
            text = body.get("yaml") if isinstance(body, dict) else None
            if not isinstance(text, str):
                raise errors.invalid("yaml", 'a JSON body must be {"yaml": "<the file>"}')
        try:
            message = self._core.apply_config(text)
        except ConfigError as exc:
            raise _config_error(exc) from exc
        return {"message": message, "desired_replicas": self._core.desired_replicas}

    # ---- adapters --------------------------------------------------------------------------

    async def adapters(self) -> dict[str, Any]:
        return {"adapters": self._core.adapter_listing()}

    async def load_adapter(self, request: Request) -> dict[str, Any]:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise errors.invalid("body", 'must be a JSON object {"lora_name", "lora_path"}')
        try:
            return await self._core.adapters.load(body.get("lora_name"), body.get("lora_path"))
        except AdapterRefused as exc:
            raise _adapter_error(exc) from exc

    async def unload_adapter(self, name: str) -> dict[str, Any]:
        try:
            return await self._core.adapters.unload(name)
        except AdapterRefused as exc:
            raise _adapter_error(exc) from exc


def _adapter_error(exc: AdapterRefused) -> APIError:
    code = "adapter_not_found" if exc.status == 404 else "invalid_adapter"
    return APIError(exc.status, exc.reason, exc.field, code)


# ---- shapes (derived from the records; more fields may come, these stay) ---------------------


def replica_json(record: ReplicaRecord) -> dict[str, Any]:
    report = record.report
    ident = report.identity if report is not None else None
    out: dict[str, Any] = {
        "id": record.replica_id,
        "state": record.state.value,
        "node": ident.node_id if ident else "",
        "address": ident.address if ident else "",
        "pid": ident.pid if ident else 0,
        "incarnation": ident.incarnation if ident else "",
        "started_at": ident.started_at if ident else None,
        "uptime_s": round(time.time() - ident.started_at, 3) if ident else 0.0,
        "managed": record.managed,
        "cordoned_by_operator": record.cordoned_by_operator,
        "draining": record.draining,
        "stop_when_empty": record.stop_when_empty,
    }
    if report is not None:
        for name in LOAD_FIELDS:
            if name not in _NOT_SHOWN:
                value = getattr(report.load, name)
                out[name] = sorted(value) if isinstance(value, frozenset) else value
        out["num_prefix_hashes"] = len(report.load.prefix_hashes)
    return out


def request_json(replica_id: str, info: RequestInfo, now: float) -> dict[str, Any]:
    out = asdict(info)
    out["id"] = out.pop("request_id")
    out["replica"] = replica_id
    out["age_s"] = round(max(0.0, now - info.arrival_time), 3)
    return out


def event_json(event: Event) -> dict[str, Any]:
    out = {k: v for k, v in asdict(event).items() if v is not None}
    out["kind"] = event.kind.value
    return out


def migration_json(record: MigrationRecord) -> dict[str, Any]:
    report = record.report
    return {
        **asdict(report),
        "downtime_ms": round(report.downtime_ms, 3),
        "duration_ms": round(report.duration_ms, 3),
        "source_replica": record.source_replica,
        "target_replica": record.target_replica,
    }


def command_json(result: CommandResult) -> dict[str, Any]:
    return {
        "id": result.command_id,
        "ok": result.ok,
        "error": None if result.error is None else str(result.error),
    }


# ---- helpers ---------------------------------------------------------------------------------


def _error(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())


async def _body(request: Request) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise APIError(413, f"request body exceeds {MAX_BODY_BYTES} bytes", "body")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.invalid("body", f"not valid JSON: {exc}") from exc


async def _json_body(request: Request) -> Any:
    return _parse_json(await _body(request))


def _config_error(exc: ConfigError) -> APIError:
    issues = [{"key": key, "reason": reason} for key, reason in exc.issues]
    return APIError(400, str(exc), param="config", code="invalid_config", extra={"issues": issues})


def _positive_limit(limit: int) -> int:
    if limit < 1:
        raise errors.invalid("limit", f"must be >= 1, got {limit}")
    return limit
