"""The shared secret on plaintext gRPC, and pickles on every gRPC method.

A replica server and a controller, each with a secret: a client without it, or with another,
is refused UNAUTHENTICATED on every method the protos define; with it, it is served. A pickle
whose unpickling would create a file is sent as the raw request body of every method, with
and without the secret: nothing unpickles it (the file never appears), and the servers go on
serving. Real gRPC servers on loopback; the controller's replica backend is the one fake.
"""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from actors.common.config import CacheConfig, EngineConfig, GrpcSecurity
from actors.common.grpc_security import SECRET_HEADER
from actors.common.replica_client import ReplicaClient
from actors.common.sampling_params import SamplingParams
from actors.common.types import GenerateSpec, LoadReport
from actors.engine.engine import LLMEngine
from actors.replica.reporter import ControllerLink
from actors.replica.server import ReplicaServer
from orchestrator.config.load import parse_config
from orchestrator.controller.client import ControllerClient
from orchestrator.controller.deployment import ConfigUpdater
from orchestrator.controller.host import ControllerHost
from orchestrator.controller.settings import ControllerSettings
from policies.cluster_view import ReplicaIdentity, ReplicaLoad
from protos import controller_pb2, replica_pb2

from .conftest import FakeNoReplicas

SECURITY = GrpcSecurity(secret="the-deployment-secret-0123")
WRONG = GrpcSecurity(secret="not-the-deployment-secret")
SERVICES = [
    *replica_pb2.DESCRIPTOR.services_by_name.values(),
    *controller_pb2.DESCRIPTOR.services_by_name.values(),
]


# Methods whose requests stream in (Generate).
STREAMED_IN = tuple(f"/{s.full_name}/{m.name}" for s in SERVICES for m in s.methods
                    if m.client_streaming)  # fmt: skip


class Touch:
    """Unpickling this creates `path`: the proof that someone unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.path,))


@pytest.fixture(scope="module")
def replica() -> Iterator[ReplicaServer]:
    engine = EngineConfig(cache=CacheConfig(cpu_kv_cache_bytes=8 << 20), device="cpu")
    server = ReplicaServer(lambda: LLMEngine(engine), "r-secret", security=SECURITY)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def controller() -> Iterator[ControllerHost]:
    cfg = parse_config("replicas:\n  count: 0\n")
    settings = ControllerSettings(security=SECURITY, admin_port=0)
    host = ControllerHost(settings, FakeNoReplicas(), ConfigUpdater(cfg))
    yield host
    host.stop()


def _load(replica_id: str) -> LoadReport:
    return LoadReport(ReplicaIdentity(replica_id, "127.0.0.1:1", incarnation="a"), 1, ReplicaLoad())


def test_replica_serves_only_callers_with_the_secret(replica: ReplicaServer) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)

    async def run() -> None:
        good = ReplicaClient(replica.address, SECURITY)
        spec = GenerateSpec("s0", (1, 2, 3), params)
        try:
            assert len([t async for d in good.generate(spec) for t in d.token_ids]) == 3
            assert await good.health()
        finally:
            await good.close()
        for security in (None, WRONG):
            bad = ReplicaClient(replica.address, security, timeout_s=2.0)
            try:
                assert not await bad.health()
            finally:
                await bad.close()

    asyncio.run(run())


def test_controller_serves_only_callers_with_the_secret(controller: ControllerHost) -> None:
    link = ControllerLink(controller.address, SECURITY)
    client = ControllerClient(controller.address, SECURITY)
    try:
        assert link.register(_load("r-ok"))
        assert "r-ok" in [r.replica_id for r in client.cluster_view().replicas]
    finally:
        link.close()
        client.close()
    for security in (None, WRONG):
        bad = ControllerLink(controller.address, security, timeout_s=2.0)
        try:
            with pytest.raises(grpc.RpcError) as info:
                bad.register(_load("r-intruder"))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            bad.close()
    client = ControllerClient(controller.address, SECURITY)
    try:
        assert "r-intruder" not in [r.replica_id for r in client.cluster_view().replicas]
    finally:
        client.close()


async def _raw_call(
    channel: grpc.aio.Channel, path: str, method: object, body: bytes, metadata: tuple
) -> grpc.StatusCode:
    """`body` as the request of `path`, unencoded; the status the server answers."""
    client_streaming = method.client_streaming  # type: ignore[attr-defined]
    server_streaming = method.server_streaming  # type: ignore[attr-defined]
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(client_streaming, server_streaming)]
    request: object = iter([body]) if client_streaming else body
    call = kind(path)(request, metadata=metadata, timeout=5.0)
    try:
        if server_streaming:
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("with_secret", [False, True])
def test_a_pickle_is_never_unpickled_on_any_method(
    replica: ReplicaServer, controller: ControllerHost, tmp_path: Path, with_secret: bool
) -> None:
    marker = tmp_path / "unpickled"
    body = pickle.dumps(Touch(marker))
    metadata = ((SECRET_HEADER, SECURITY.secret),) if with_secret else ()

    async def run() -> dict[str, grpc.StatusCode]:
        codes = {}
        for address in (replica.address, controller.address):
            async with grpc.aio.insecure_channel(address) as channel:
                for service in SERVICES:
                    for method in service.methods:
                        path = f"/{service.full_name}/{method.name}"
                        codes[f"{address}{path}"] = await _raw_call(
                            channel, path, method, body, metadata
                        )
        return codes

    codes = asyncio.run(run())
    assert len(codes) >= 2 * 8
    assert not marker.exists()
    if not with_secret:
        # A service the port does not host is UNIMPLEMENTED; every hosted one refuses. A client
        # still writing its request stream when the server refuses it can read the end as
        # INTERNAL ("Internal error from Core", a race in the client's gRPC core, about 2 % of
        # calls on a loaded machine): refused all the same, never served.
        for path, code in codes.items():
            streams_in = path.endswith(STREAMED_IN)
            allowed = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNIMPLEMENTED}
            allowed |= {grpc.StatusCode.INTERNAL} if streams_in else set()
            assert code in allowed, codes
        assert grpc.StatusCode.UNAUTHENTICATED in codes.values()
    # Both servers still serve.
    link = ControllerLink(controller.address, SECURITY)
    try:
        assert link.register(_load(f"r-after-{with_secret}"))
    finally:
        link.close()

    async def healthy() -> bool:
        client = ReplicaClient(replica.address, SECURITY)
        try:
            return await client.health()
        finally:
            await client.close()

    assert asyncio.run(healthy())
