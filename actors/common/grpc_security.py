"""How gRPC peers of one deployment trust each other: optional TLS (mutual with a CA) and a
shared secret every call carries. One helper for servers, one for channels.

The secret guards plaintext deployments: without it, anyone who reaches a replica's port could
submit work or send it commands. It rides in call metadata, so over plaintext gRPC it is visible
to whoever can sniff the network; TLS protects it (docs/security.md).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from actors.common.config import GrpcSecurity

SECRET_HEADER = "x-fleetlm-secret"  # noqa: S105 -- the metadata key, not a secret


def server_credentials(security: GrpcSecurity) -> grpc.ServerCredentials:
    if security.cert is None or security.key is None:
        raise ValueError("security.tls: a server needs both cert and key")
    pair = (Path(security.key).read_bytes(), Path(security.cert).read_bytes())
    if security.ca is None:
        return grpc.ssl_server_credentials([pair])
    # A CA means mutual TLS: peers must present a certificate it signed.
    ca = Path(security.ca).read_bytes()
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=True)


def channel_credentials(security: GrpcSecurity) -> grpc.ChannelCredentials:
    # With no explicit CA the server's own (self-signed) certificate is the trust root.
    root = security.ca or security.cert
    root_pem = Path(root).read_bytes() if root else None
    if security.ca is None or security.cert is None or security.key is None:
        return grpc.ssl_channel_credentials(root_pem)
    return grpc.ssl_channel_credentials(
        root_pem, Path(security.key).read_bytes(), Path(security.cert).read_bytes()
    )


# Clients ping every 10 s (below) so a dead peer is noticed on an idle stream; servers must
# accept that, or gRPC's default (5 min between pings without data) answers the third ping with
# GOAWAY "too_many_pings" and kills every stream of an idle connection.
SERVER_OPTIONS = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.max_receive_message_length", 64 << 20),
)

_CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.max_receive_message_length", 64 << 20),
)


def aio_server(security: GrpcSecurity | None) -> grpc.aio.Server:
    """A server that refuses calls without the deployment's secret (when it has one)."""
    interceptors = [_SecretCheck(security.secret)] if security and security.secret else []
    return grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)


def add_port(server: grpc.aio.Server, address: str, security: GrpcSecurity | None) -> int:
    if security is None or not security.tls:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, server_credentials(security))


def sync_channel(address: str, security: GrpcSecurity | None) -> grpc.Channel:
    if security is None or not security.tls:
        channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
    else:
        creds = channel_credentials(security)
        channel = grpc.secure_channel(address, creds, options=_CHANNEL_OPTIONS)
    if security is None or security.secret is None:
        return channel
    return grpc.intercept_channel(channel, _SyncSecret(security.secret))


def aio_channel(address: str, security: GrpcSecurity | None) -> grpc.aio.Channel:
    secret = security.secret if security else None
    interceptors = _aio_secret(secret) if secret else None
    if security is None or not security.tls:
        return grpc.aio.insecure_channel(
            address, options=_CHANNEL_OPTIONS, interceptors=interceptors
        )
    creds = channel_credentials(security)
    return grpc.aio.secure_channel(
        address, creds, options=_CHANNEL_OPTIONS, interceptors=interceptors
    )


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class _SecretCheck(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED for a call whose metadata lacks the secret; compared in constant time."""

    def __init__(self, secret: str) -> None:
        self._digest = _digest(secret)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        given = dict(details.invocation_metadata or ()).get(SECRET_HEADER)
        if isinstance(given, str) and hmac.compare_digest(_digest(given), self._digest):
            return await continuation(details)
        return _refusal(await continuation(details))


def _refusal(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
    """A handler of the same kind as `handler` that aborts before reading the request."""
    if handler is None:
        return None  # an unknown method stays UNIMPLEMENTED

    async def abort(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong fleetlm secret")

    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return make(abort)


class _CallDetails(
    NamedTuple("_CallDetails", [("method", str), ("timeout", Any), ("metadata", Any),
                                ("credentials", Any), ("wait_for_ready", Any),
                                ("compression", Any)]),
    grpc.ClientCallDetails,
):  # fmt: skip
    """grpc's synchronous call details are an interface; this is a value of it."""


class _SyncSecret(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the secret to every call of a synchronous channel."""

    def __init__(self, secret: str) -> None:
        self._header = (SECRET_HEADER, secret)

    def _call(self, continuation: Any, details: grpc.ClientCallDetails, request: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        new = _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )
        return continuation(new, request)

    intercept_unary_unary = _call
    intercept_unary_stream = _call
    intercept_stream_unary = _call
    intercept_stream_stream = _call


class _AioSecret:
    """Adds the secret to a call of an asyncio channel (one subclass per call kind below:
    grpc.aio picks an interceptor by its base class)."""

    def __init__(self, secret: str) -> None:
        self._header = (SECRET_HEADER, secret)

    async def _call(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._header)
        return await continuation(details._replace(metadata=metadata), request)


class _AioUnaryUnary(_AioSecret, grpc.aio.UnaryUnaryClientInterceptor):
    intercept_unary_unary = _AioSecret._call


class _AioUnaryStream(_AioSecret, grpc.aio.UnaryStreamClientInterceptor):
    intercept_unary_stream = _AioSecret._call


class _AioStreamUnary(_AioSecret, grpc.aio.StreamUnaryClientInterceptor):
    intercept_stream_unary = _AioSecret._call


class _AioStreamStream(_AioSecret, grpc.aio.StreamStreamClientInterceptor):
    intercept_stream_stream = _AioSecret._call


def _aio_secret(secret: str) -> list[grpc.aio.ClientInterceptor]:
    return [cls(secret) for cls in (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary,
                                     _AioStreamStream)]  # fmt: skip
