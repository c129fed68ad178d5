"""Optional TLS on both planes: a replica server and the controller with a self-signed cert."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from actors.common.commands import ListRequests, RequestList
from actors.common.config import CacheConfig, EngineConfig, GrpcSecurity
from actors.common.control_client import ReplicaControlClient
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

from .conftest import FakeNoReplicas

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> GrpcSecurity:
    d: Path = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    # TLS and the shared secret together, as a deployment with TLS runs.
    return GrpcSecurity(
        cert=str(d / "cert.pem"), key=str(d / "key.pem"), secret="tls-and-a-secret-0123"
    )


def test_replica_over_tls(tls: GrpcSecurity) -> None:
    engine = EngineConfig(cache=CacheConfig(cpu_kv_cache_bytes=8 << 20), device="cpu")
    server = ReplicaServer(lambda: LLMEngine(engine), "r-tls", security=tls)
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)

    async def run() -> None:
        client = ReplicaClient(server.address, security=tls)
        plain = ReplicaClient(server.address, timeout_s=2.0)
        control = ReplicaControlClient(server.address, tls)
        plain_control = ReplicaControlClient(server.address)
        try:
            spec = GenerateSpec("t0", (1, 2, 3), params)
            tokens = [t async for d in client.generate(spec) for t in d.token_ids]
            assert len(tokens) == 3
            assert not await plain.health()  # a plaintext client cannot talk to it
            # The control plane shares the port, and its TLS.
            listed = await control.execute(ListRequests(), "l1", 5)
            assert listed.body == RequestList(())
            with pytest.raises(grpc.aio.AioRpcError):
                await plain_control.execute(ListRequests(), "l2", 2)
        finally:
            await client.close()
            await plain.close()
            await control.close()
            await plain_control.close()

    try:
        asyncio.run(run())
    finally:
        server.stop()


def _no_replicas(tls: GrpcSecurity) -> tuple[ControllerSettings, ConfigUpdater]:
    cfg = parse_config("replicas:\n  count: 0\n")
    return ControllerSettings(security=tls, admin_port=0), ConfigUpdater(cfg)


def _load(replica_id: str, seq: int = 1) -> LoadReport:
    return LoadReport(
        ReplicaIdentity(replica_id, "127.0.0.1:1", incarnation="a"), seq, ReplicaLoad()
    )


def test_controller_over_tls(tls: GrpcSecurity) -> None:
    settings, config = _no_replicas(tls)
    host = ControllerHost(settings, FakeNoReplicas(), config)
    link = ControllerLink(host.address, tls)
    client = ControllerClient(host.address, tls)
    try:
        assert link.register(_load("r-tls"))
        assert [r.replica_id for r in client.cluster_view().replicas] == ["r-tls"]
        plain = ControllerLink(host.address, timeout_s=1.0)
        with pytest.raises(grpc.RpcError):
            plain.report(_load("r-tls", seq=2**40))
        plain.close()
    finally:
        link.close()
        client.close()
        host.stop()


def test_controller_mutual_tls(tls: GrpcSecurity) -> None:
    mtls = dataclasses.replace(tls, ca=tls.cert)  # the self-signed cert is its own CA
    settings, config = _no_replicas(mtls)
    host = ControllerHost(settings, FakeNoReplicas(), config)
    with_cert = ControllerLink(host.address, mtls)
    without_cert = ControllerLink(host.address, GrpcSecurity(ca=tls.cert), timeout_s=2.0)
    try:
        assert with_cert.register(_load("r-mtls"))
        with pytest.raises(grpc.RpcError):
            without_cert.register(_load("r-anon"))
    finally:
        with_cert.close()
        without_cert.close()
        host.stop()
