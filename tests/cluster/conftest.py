"""Shared Ray fixtures for the cluster tier.

One local Ray (small num_cpus) is shared by every module that asks for `ray_local`; a module that
needs its own multi-node cluster (test_multinode.py) shuts it down and the next `ray_local` user
starts it again. Ray is shut down at the end of the session.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

RAY_NUM_CPUS = 4  # logical slots: two 1-CPU replicas plus room; the machine has 2 cores


def ensure_local_ray() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(
            # Always a new local cluster: never one a `ray start` left on this machine (Ray
            # would otherwise join whatever /tmp/ray/ray_current_cluster names).
            address="local",
            num_cpus=RAY_NUM_CPUS,
            namespace="fleetlm",
            include_dashboard=False,
            log_to_driver=bool(os.environ.get("FLEETLM_TEST_RAY_LOGS")),
        )


@pytest.fixture(scope="session")
def _ray_session() -> Iterator[None]:
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_local(_ray_session: None) -> Iterator[None]:
    """A local Ray cluster (started on first use, shared by modules)."""
    ensure_local_ray()
    yield


def tiny_config_yaml(replicas: int = 2, policy: str = "least_load", **server: object) -> str:
    """A deployment file for tests: the embedded tiny model on CPU replicas, fast reports."""
    opts = {
        "report_interval_s": 0.25,
        "unhealthy_after_s": 1.5,
        "controller_grpc_port": 0,
        "http_port": 0,
        **server,
    }
    server_lines = "\n".join(f"  {k}: {v}" for k, v in opts.items())
    return f"""
model:
  path: fleetlm/tiny-llama
replicas:
  count: {replicas}
  resources:
    num_cpus: 1.0
engine:
  cpu_kv_cache_bytes: 16MiB
  max_num_seqs: 16
  max_num_batched_tokens: 256
dispatch:
  policy: {policy}
server:
{server_lines}
"""


async def generate_following(
    address: str,
    spec: object,
    on_delta: Callable[[object], None] = lambda d: None,
    security: object = None,
) -> list:
    """Stream `spec` (a GenerateSpec) from the replica at `address` and, when the request
    migrates, follow it to the replica it moved to (`attach`), as the ingress does: the deltas
    of the whole request, wherever they were made. `security`: the deployment's GrpcSecurity
    (ClusterHandle.security) for replicas a controller started."""
    from actors.common.replica_client import ReplicaClient

    clients = {address: ReplicaClient(address, security)}  # type: ignore[arg-type]
    deltas: list = []
    try:
        stream = clients[address].generate(spec)  # type: ignore[arg-type]
        while True:
            moved_to = None
            async for d in stream:
                deltas.append(d)
                on_delta(d)
                moved_to = d.migrated_to or moved_to
            if moved_to is None:
                return deltas
            client = clients.get(moved_to) or ReplicaClient(moved_to, security)  # type: ignore[arg-type]
            clients[moved_to] = client
            stream = client.attach(spec.request_id)  # type: ignore[attr-defined]
    finally:
        for c in clients.values():
            await c.close()


def burst_through_a_fault(
    base_url: str, n: int, max_tokens: int, fault: Callable[[], object], after_s: float
) -> None:
    """`n` concurrent completions of `max_tokens` tokens; `fault()` runs `after_s` into them.
    The ledger: every request ends exactly once, at least half of them after the fault (they
    were in flight), and each one completed with all its tokens."""
    import concurrent.futures
    import time

    import httpx

    body = {"model": "fleetlm/tiny-llama", "prompt": [5, 6, 7], "max_tokens": max_tokens}
    body["ignore_eos"] = True

    def one(i: int) -> tuple[int, tuple[httpx.Response, float]]:
        r = httpx.post(f"{base_url}/v1/completions", json=body, timeout=180)
        return i, (r, time.monotonic())

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        pending = pool.map(one, range(n))
        time.sleep(after_s)  # the burst is in flight
        fault()
        fault_at = time.monotonic()
        ledger = dict(pending)
    assert len(ledger) == n
    assert sum(end > fault_at for _, end in ledger.values()) >= n // 2  # in flight at the fault
    for i, (r, _) in ledger.items():
        assert r.status_code == 200, (i, r.status_code, r.text)
        assert r.json()["usage"]["completion_tokens"] == max_tokens


class FakeNoReplicas:
    """The controller's replica-backend seam, for tests that register replicas by hand."""

    def create_replica(self, *args: object) -> None:
        raise AssertionError("desired is 0")

    def list_replicas(self) -> list[str]:
        return []

    def is_alive(self, replica_id: str) -> bool:
        return False

    def stop_replica(self, replica_id: str) -> None:
        return None

    def kill_replica(self, replica_id: str) -> None:
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(f"{url}/health", timeout=5)  # open: probes carry no key
            if last.status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.2)  # polling a server that is starting up
    raise AssertionError(f"stack never became healthy: {last}")


@contextlib.contextmanager
def started_stack(text: str, **options: Any) -> Iterator[Any]:
    """The whole stack (start_stack, as `fleetlm serve` runs it) from the deployment YAML
    `text`, healthy; shut down on exit. `options`: more ServeOptions (http_path, ...)."""
    from orchestrator.api.launch import ServeOptions, start_stack
    from orchestrator.config.load import parse_config

    opts = ServeOptions(config=parse_config(text), admin_port=0, write_admin_files=False, **options)
    st = start_stack(opts)
    try:
        wait_healthy(st.base_url)
        yield st
    finally:
        st.shutdown()
