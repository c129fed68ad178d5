"""ControllerClient: the one wrapper around the controller's gRPC stub for ingress and CLI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from actors.replica.tls import TlsFiles, aio_channel, sync_channel
from orchestrator.controller.wire import ViewUpdate, meta_to_pb, update_from_pb
from policies.cluster_view import ClusterView, RequestMeta
from policies.dispatch import REASON_ALL_FULL
from protos import controller_pb2, controller_pb2_grpc


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


class ControllerClient:
    def __init__(self, address: str, tls: TlsFiles | None = None, timeout_s: float = 5.0) -> None:
        self.address = address
        self._tls = tls
        self._timeout_s = timeout_s
        self._channel = sync_channel(address, tls)
        self._stub = controller_pb2_grpc.ControllerStub(self._channel)

    def route(self, meta: RequestMeta) -> RouteResult | None:
        return self.route_outcome(meta).result

    def route_outcome(self, meta: RequestMeta) -> RouteOutcome:
        reply = self._stub.Route(
            controller_pb2.RouteRequest(meta=meta_to_pb(meta)), timeout=self._timeout_s
        )
        return _outcome(reply)

    def cluster_view(self) -> ClusterView:
        return self.view_update().view

    def view_update(self) -> ViewUpdate:
        """One snapshot of the view and the policy (the first message of a watch)."""
        call = self._stub.WatchClusterView(
            controller_pb2.WatchRequest(watcher_id="snapshot"), timeout=self._timeout_s
        )
        try:
            return update_from_pb(next(call))
        finally:
            call.cancel()

    def wait_for_replicas(self, count: int, timeout_s: float) -> ClusterView:
        """Block until the view holds `count` healthy replicas; TimeoutError otherwise."""
        call = self._stub.WatchClusterView(
            controller_pb2.WatchRequest(watcher_id="wait"), timeout=timeout_s
        )
        try:
            for msg in call:
                view = update_from_pb(msg).view
                if len(view.healthy()) >= count:
                    return view
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        finally:
            call.cancel()
        raise TimeoutError(f"fewer than {count} healthy replicas after {timeout_s:.0f}s")

    def apply_config(self, yaml_text: str) -> tuple[bool, str]:
        reply = self._stub.ApplyConfig(
            controller_pb2.ApplyConfigRequest(yaml_text=yaml_text), timeout=self._timeout_s
        )
        return reply.ok, reply.message

    def status(self) -> dict[str, Any]:
        reply = self._stub.Status(controller_pb2.StatusRequest(), timeout=self._timeout_s)
        return json.loads(reply.json)

    def ping(self) -> bool:
        try:
            self.status()
        except grpc.RpcError:
            return False
        return True

    async def watch_view(self) -> AsyncIterator[ClusterView]:
        async for update in self.watch_updates():
            yield update.view

    async def watch_updates(self, watcher_id: str = "") -> AsyncIterator[ViewUpdate]:
        """Stream the controller's view (and policy) as it changes; ends with the connection."""
        channel = aio_channel(self.address, self._tls)
        try:
            stub = controller_pb2_grpc.ControllerStub(channel)
            call = stub.WatchClusterView(controller_pb2.WatchRequest(watcher_id=watcher_id))
            async for msg in call:
                yield update_from_pb(msg)
        finally:
            await asyncio.shield(channel.close())

    async def route_async(self, meta: RequestMeta) -> RouteOutcome:
        """Per-request routing through the controller, without blocking the caller's loop."""
        return await asyncio.to_thread(self.route_outcome, meta)

    def close(self) -> None:
        self._channel.close()


def _outcome(reply: controller_pb2.RouteReply) -> RouteOutcome:
    if not reply.found:
        overloaded = reply.reason == REASON_ALL_FULL
        return RouteOutcome(None, reply.reason, overloaded)
    return RouteOutcome(RouteResult(reply.replica_id, reply.address, reply.reason), reply.reason)
