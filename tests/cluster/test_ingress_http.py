"""The ingress replica's own HTTP listener (orchestrator/http_server.py), without Ray.

It must serve the app on a port that several ingress replicas share, stop cleanly, report a dead
listener to Serve's health check, and start_stack must refuse a port something already holds.
"""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
from fastapi import FastAPI, Request

from orchestrator.api.launch import check_port_free
from orchestrator.http_server import DirectHTTPServer, bind_socket

from .conftest import free_port


def _app(name: str) -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, object]:
        return {"server": name, "bytes": len(await request.body())}

    return app


def test_serves_and_stops() -> None:
    async def run() -> None:
        port = free_port()
        server = DirectHTTPServer(_app("a"), "127.0.0.1", port)
        await server.start()
        server.check()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            r = await c.post("/echo", content=b"x" * 1000)
            assert r.json() == {"server": "a", "bytes": 1000}
        await server.stop()
        with pytest.raises(RuntimeError, match="not running"):
            server.check()
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as c:
                await c.post(f"http://127.0.0.1:{port}/echo")

    asyncio.run(run())


def test_replicas_share_the_port() -> None:
    async def run() -> None:
        port = free_port()
        servers = [DirectHTTPServer(_app(n), "127.0.0.1", port) for n in ("a", "b")]
        for s in servers:
            await s.start()
        seen: set[str] = set()
        for _ in range(64):  # new connection each time: the kernel spreads them over both
            async with httpx.AsyncClient() as c:
                r = await c.post(f"http://127.0.0.1:{port}/echo")
                seen.add(r.json()["server"])
        for s in servers:
            await s.stop()
        assert seen == {"a", "b"}

    asyncio.run(run())


def test_accepted_sockets_do_not_wait_for_delayed_acks() -> None:
    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        sock.close()


def test_a_held_port_is_refused_before_deploying() -> None:
    sock = bind_socket("127.0.0.1", 0)  # a listener that would share the port (SO_REUSEPORT)
    sock.listen()
    port = sock.getsockname()[1]
    try:
        with pytest.raises(
            ValueError, match=f"server.http_port: cannot listen on 127.0.0.1:{port}"
        ):
            check_port_free("127.0.0.1", port)
        with pytest.raises(RuntimeError, match="cannot listen"):
            with socket.socket() as plain:
                plain.bind(("127.0.0.1", 0))
                plain.listen()
                bind_socket("127.0.0.1", plain.getsockname()[1])
    finally:
        sock.close()
    assert check_port_free("127.0.0.1", port) == port
    assert check_port_free("127.0.0.1", 0) > 0
