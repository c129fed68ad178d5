"""An HTTP listener inside the running event loop: the ingress replicas' own (clients reach the
OpenAI app without Ray Serve's proxy) and the controller's admin API.

Through Serve's proxy every request crosses two processes before the app sees it (proxy actor ->
ingress replica actor, the body fetched back from the proxy by a second actor call, the response
relayed through Ray object refs): ~12 ms per request on an H100 host, far above the issue's
2 ms budget (docs/serving-benchmarks.md). Here each ingress replica serves the same FastAPI app
itself, on the configured host:port, in the event loop that owns its gRPC clients. Serve still
owns the replica: it starts, health-checks (`check`), restarts and scales it.

Several ingress replicas on one node share the port through SO_REUSEPORT (the kernel spreads
connections across them), which is how Serve's own direct-ingress mode and uvicorn's workers
share a port.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import uvicorn
from fastapi import FastAPI

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 30.0
STARTUP_POLL_S = 0.01  # uvicorn exposes no event for "listening"; `started` is a flag
KEEP_ALIVE_S = 30  # clients (load generators, SDKs) reuse connections across requests


def bind_socket(host: str, port: int, reuse_port: bool = True) -> socket.socket:
    """A listening socket on host:port; `reuse_port`: other ingress replicas on this node may
    share it (the admin API's must not: a second controller there is a mistake to report)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Accepted sockets inherit it. asyncio's selector loop sets it only when sock.proto is
        # IPPROTO_TCP (not so here); without it a response's second write (the body after the
        # headers) waits for the client's delayed ACK: 44 ms -> 0.7 ms p50 for a no-op POST.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"cannot listen on {host}:{port}: {exc}") from exc
    sock.set_inheritable(True)
    return sock


class DirectHTTPServer:
    """uvicorn serving `app` on a shared port, inside the running event loop."""

    def __init__(
        self,
        app: FastAPI,
        host: str,
        port: int,
        graceful_shutdown_s: float = 15.0,
        reuse_port: bool = True,
        name: str = "ingress",
    ) -> None:
        self.host = host
        self._name = name
        self._sock = bind_socket(host, port, reuse_port)
        self.port = int(self._sock.getsockname()[1])  # the one bound when `port` is 0
        config = uvicorn.Config(
            app,
            lifespan="off",
            ws="none",
            access_log=False,  # per-request counts and latencies are in /metrics
            log_config=None,
            log_level="warning",
            timeout_keep_alive=KEEP_ALIVE_S,
            timeout_graceful_shutdown=graceful_shutdown_s,
        )
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen; returns once uvicorn accepts connections, raises if it fails to start."""
        self._task = asyncio.get_running_loop().create_task(self._server.serve([self._sock]))
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._server.started:
            if self._task.done():
                self._task.result()  # re-raises the startup error
                raise RuntimeError(f"{self._name}: HTTP server on {self.address} exited at startup")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self._name}: HTTP server on {self.address} did not start")
            await asyncio.sleep(STARTUP_POLL_S)
        logger.info("%s: serving HTTP on %s", self._name, self.address)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def check(self) -> None:
        """Raise if the listener is gone, so Serve's health check replaces this replica."""
        if self._task is None or self._task.done():
            raise RuntimeError(f"{self._name}: HTTP server on {self.address} is not running")

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to the graceful timeout)."""
        task, self._task = self._task, None
        if task is None:
            self._sock.close()
            return
        self._server.should_exit = True
        try:
            await task
        except Exception as exc:  # shutting down anyway; keep the reason
            logger.warning("%s: HTTP server on %s stopped with %r", self._name, self.address, exc)
