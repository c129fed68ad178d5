"""ControllerClient: the one wrapper around the controller's gRPC stub, for routers (the view
stream) and for whoever waits for replicas to come up. Operators use the admin API instead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from actors.common.config import GrpcSecurity
from actors.common.grpc_security import aio_channel, sync_channel
from orchestrator.controller.wire import ViewUpdate, update_from_pb
from policies.cluster_view import ClusterView
from protos import controller_pb2, controller_pb2_grpc


class ControllerClient:
    def __init__(
        self, address: str, security: GrpcSecurity | None = None, timeout_s: float = 5.0
    ) -> None:
        self.address = address
        self._security = security
        self._timeout_s = timeout_s
        self._channel = sync_channel(address, security)
        self._stub = controller_pb2_grpc.ControllerStub(self._channel)

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

    async def watch_updates(self, watcher_id: str = "") -> AsyncIterator[ViewUpdate]:
        """Stream the controller's view (and policy) as it changes; ends with the connection."""
        channel = aio_channel(self.address, self._security)
        try:
            stub = controller_pb2_grpc.ControllerStub(channel)
            call = stub.WatchClusterView(controller_pb2.WatchRequest(watcher_id=watcher_id))
            async for msg in call:
                yield update_from_pb(msg)
        finally:
            await asyncio.shield(channel.close())

    async def resolve_adapter(self, name: str, timeout_s: float) -> str | None:
        """Ask the controller to serve adapter `name` from its resolve_dir; None when it is
        served, else why not."""
        channel = aio_channel(self.address, self._security)
        try:
            stub = controller_pb2_grpc.ControllerStub(channel)
            request = controller_pb2.ResolveAdapterRequest(name=name)
            reply = await stub.ResolveAdapter(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            return f"the controller did not answer ({exc.code().name})"
        finally:
            await asyncio.shield(channel.close())
        return None if reply.served else reply.reason

    def close(self) -> None:
        self._channel.close()
