"""Optional TLS for the control and token planes: one helper for servers, one for channels."""

from __future__ import annotations

from pathlib import Path

import grpc

from actors.common.config import TlsFiles


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    if tls.cert is None or tls.key is None:
        raise ValueError("security.tls: a server needs both cert and key")
    pair = (Path(tls.key).read_bytes(), Path(tls.cert).read_bytes())
    if tls.ca is None:
        return grpc.ssl_server_credentials([pair])
    # A CA means mutual TLS: peers must present a certificate it signed.
    ca = Path(tls.ca).read_bytes()
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=True)


def channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    # With no explicit CA the server's own (self-signed) certificate is the trust root.
    root = tls.ca or tls.cert
    root_pem = Path(root).read_bytes() if root else None
    if tls.ca is None or tls.cert is None or tls.key is None:
        return grpc.ssl_channel_credentials(root_pem)
    return grpc.ssl_channel_credentials(
        root_pem, Path(tls.key).read_bytes(), Path(tls.cert).read_bytes()
    )


def add_port(server: grpc.Server | grpc.aio.Server, address: str, tls: TlsFiles | None) -> int:
    if tls is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, server_credentials(tls))


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


def sync_channel(address: str, tls: TlsFiles | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
    return grpc.secure_channel(address, channel_credentials(tls), options=_CHANNEL_OPTIONS)


def aio_channel(address: str, tls: TlsFiles | None) -> grpc.aio.Channel:
    if tls is None:
        return grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(address, channel_credentials(tls), options=_CHANNEL_OPTIONS)
