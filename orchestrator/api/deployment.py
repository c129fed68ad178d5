"""The ingress as a Ray Serve deployment: one OpenAIServing + Router per ingress replica.

Ingress replicas hold no state the controller needs: each builds its own Router (fed by the
controller's streamed ClusterView) and its own replica connections, so Serve may scale them.

By default each ingress replica also serves HTTP itself on the configured host:port
(http_server.py), so requests skip Ray Serve's proxy; the same app stays reachable through Serve's
proxy when launch.py starts one (`ServeOptions.http_path="serve-proxy"` or `serve_proxy_port`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import grpc
from fastapi import FastAPI
from ray import serve
from ray.serve.exceptions import RayServeException

from actors.common.config import GrpcSecurity
from actors.common.locator import ControllerLocator
from orchestrator.api.app import Handlers, build_app
from orchestrator.api.serving import OpenAIServing, ReplicaPool, RequestLimits, ServedModel
from orchestrator.controller.router import Router
from orchestrator.controller.settings import CONTROLLER_NAME, NAMESPACE
from orchestrator.http_server import DirectHTTPServer
from orchestrator.metrics.ingress import IngressMetrics

logger = logging.getLogger(__name__)

APP_NAME = "fleetlm"
DEPLOYMENT_NAME = "fleetlm-ingress"


@dataclass(frozen=True)
class IngressSettings:
    controller_address: str
    model_name: str  # the name clients send as `model`
    max_body_bytes: int = 1 << 20
    health_timeout_s: float = 2.0
    # How long a new ingress replica waits for a replica to describe the model (its limits and
    # tokenizer): the ingress serves nothing it could not validate.
    model_wait_s: float = 300.0
    num_replicas: int = 1
    security: GrpcSecurity | None = None  # gRPC to the controller and replicas (config.security)
    limits: RequestLimits = RequestLimits()  # what one request may ask for
    # SHA-256 digests of the accepted API keys (empty: no auth); keys never leave the CLI.
    api_key_digests: frozenset[str] = frozenset()
    # Where each ingress replica serves HTTP itself (None: only through Serve's proxy).
    http_host: str | None = None
    http_port: int | None = None
    # The node those replicas run on, so host:port is where clients look: a Ray resource only
    # that node has ("node:__internal_head__", or "node:<ip>" for a driver off the head).
    node_resource: str | None = None
    # The controller's admin API: /v1/load_lora_adapter and /v1/unload_lora_adapter relay there
    # with the caller's admin token (None: those routes answer 501).
    admin_url: str | None = None

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1:
            raise ValueError(f"server.max_body_bytes: must be >= 1, got {self.max_body_bytes}")
        if self.num_replicas < 1:
            raise ValueError(f"ingress_replicas: must be >= 1, got {self.num_replicas}")


class HealthChecker:
    """/health: "can this ingress serve?" — at least one replica in its view answers. Whether
    the controller is connected is reported beside it: routing goes on from the last view."""

    def __init__(self, router: Router, pool: ReplicaPool, timeout_s: float) -> None:
        self._router = router
        self._pool = pool
        self._timeout_s = timeout_s

    async def __call__(self) -> dict[str, Any]:
        view = self._router.view
        replicas = list(view.healthy()) if view is not None else []
        answering = None
        for r in replicas:
            if await self._replica_ok(r.address):
                answering = r.replica_id
                break
        return {
            "ok": answering is not None,
            "controller": self._router.connected,
            "replicas_healthy": len(replicas),
            "replica_answering": answering,
        }

    async def _replica_ok(self, address: str) -> bool:
        try:
            return await asyncio.wait_for(self._pool.get(address).health(), self._timeout_s)
        except Exception as exc:
            logger.warning("health: replica %s did not answer: %s", address, exc)
            return False


async def describe_model(
    name: str, router: Router, pool: ReplicaPool, wait_s: float, poll_s: float = 0.2
) -> ServedModel:
    """The served model as a healthy replica describes it; waits up to `wait_s` for one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    last = "no healthy replica in the controller's view yet"
    while True:
        view = router.view
        for replica in view.healthy() if view is not None else ():
            try:
                info = await pool.get(replica.address).describe_model()
            except grpc.aio.AioRpcError as exc:
                last = f"replica {replica.replica_id}: {exc.code().name} {exc.details()}"
                continue
            return ServedModel.from_info(name, info)
        if loop.time() > deadline:
            raise RuntimeError(f"ingress: no replica described the model in {wait_s:.0f}s ({last})")
        await asyncio.sleep(poll_s)  # replicas are still starting


@serve.deployment(name=DEPLOYMENT_NAME, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class OpenAIIngress:
    async def __init__(self, settings: IngressSettings) -> None:
        # The router finds a restarted controller again through its named actor.
        self._router = Router(
            settings.controller_address,
            security=settings.security,
            resolve=ControllerLocator(CONTROLLER_NAME, NAMESPACE),
        )
        await self._router.start()
        self._pool = ReplicaPool(settings.security)
        model = await describe_model(
            settings.model_name, self._router, self._pool, settings.model_wait_s
        )
        self._metrics = IngressMetrics(_serve_replica_id())
        health = HealthChecker(self._router, self._pool, settings.health_timeout_s)
        serving = OpenAIServing(
            model,
            self._router,
            self._pool,
            self._router.resolve_adapter,
            on_route=self._metrics.route.observe,
            limits=settings.limits,
        )
        handlers = Handlers(
            serving,
            self._metrics,
            health,
            settings.max_body_bytes,
            settings.api_key_digests,
            admin_url=settings.admin_url,
        )
        self._app = build_app(handlers)
        self._http: DirectHTTPServer | None = None
        if settings.http_port is not None:
            host = settings.http_host or "127.0.0.1"
            self._http = DirectHTTPServer(self._app, host, settings.http_port)
            await self._http.start()

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self._app

    async def check_health(self) -> None:
        """Serve's periodic probe: a replica whose own listener died is replaced."""
        if self._http is not None:
            self._http.check()

    async def __del__(self) -> None:
        if self._http is not None:
            await self._http.stop()  # in-flight requests still need the router and pool
        await self._router.close()
        await self._pool.close()


def _serve_replica_id() -> str | None:
    """Ray Serve's id of this ingress replica (the metrics' `ingress` label): unique among the
    replicas and fixed for the process's life; None outside a Serve replica."""
    try:
        return serve.get_replica_context().replica_id.unique_id
    except RayServeException:
        return None


def build_ingress(settings: IngressSettings) -> serve.Application:
    actor_options: dict[str, Any] = {"num_cpus": 0}
    if settings.node_resource is not None:
        actor_options["resources"] = {settings.node_resource: 0.001}
    return OpenAIIngress.options(
        num_replicas=settings.num_replicas,
        ray_actor_options=actor_options,
        # Requests wait on the replicas, not in the ingress: do not let Serve queue them here.
        max_ongoing_requests=4096,
    ).bind(settings)
