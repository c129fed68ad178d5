"""A real two-node Ray cluster on this machine (ray.cluster_utils: a head and a worker, each a
raylet with one CPU), and fleetlm deployed on it the way a cluster user does it: `fleetlm serve
--address ...` from a shell. Each node holds one replica; requests are served by both."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import free_port, tiny_config_yaml
from .test_serve_cli import CLI, _wait_healthy


@pytest.fixture(scope="module")
def two_nodes(_ray_session: None) -> Iterator[str]:
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()  # the shared local Ray; the next module that needs it starts it again
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes.add_node(num_cpus=1)  # one 1-CPU replica per node: nowhere else to go
    nodes.wait_for_nodes()
    try:
        yield nodes.address
    finally:
        nodes.shutdown()


def test_fleetlm_serve_joins_a_two_node_cluster_and_serves_from_both(
    two_nodes: str, tmp_path: Path
) -> None:
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text(tiny_config_yaml(replicas=2, policy="round_robin", host="0.0.0.0"))
    port, admin_port = free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FLEETLM_CACHE": str(tmp_path / "cache")}
    env.pop("FLEETLM_ADMIN_TOKEN", None)
    args = ["serve", "--config", str(cfg), "--address", two_nodes, "--port", str(port)]
    proc = subprocess.Popen(
        [*CLI, *args, "--admin-port", str(admin_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, timeout_s=180)
        token = (tmp_path / "cache" / "admin-token").read_text().strip()
        admin = httpx.Client(
            base_url=f"http://127.0.0.1:{admin_port}/admin/v1",
            headers={"Authorization": f"Bearer {token}"},
        )

        def replicas() -> list[dict]:
            return admin.get("/replicas").json()["replicas"]

        _until_two_ready(replicas)
        assert len({r["node"] for r in replicas()}) == 2, replicas()
        before = {r["id"]: r["num_steps"] for r in replicas()}
        body = {"model": "fleetlm/tiny-llama", "prompt": [5, 6, 7], "max_tokens": 8}
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            outs = list(
                pool.map(
                    lambda _: httpx.post(f"{url}/v1/completions", json=body, timeout=60),
                    range(8),
                )
            )
        assert all(o.status_code == 200 for o in outs), [o.text for o in outs]
        _until(lambda: all(r["num_steps"] > before[r["id"]] for r in replicas()))
        admin.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    assert proc.returncode == 0, output[-3000:]


def _until_two_ready(replicas: object) -> None:
    _until(lambda: sum(r["state"] == "ready" for r in replicas()) == 2, timeout_s=120)


def _until(check: object, timeout_s: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.25)  # polling the admin API while the cluster settles


def test_fleetlm_serve_notices_when_ray_goes_away(_ray_session: None, tmp_path: Path) -> None:
    """Ray's GCS dies under a running `fleetlm serve`: it says so and exits non-zero within
    seconds instead of sitting on a dead deployment (and a 30 s SIGINT)."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    address = nodes.address
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text(tiny_config_yaml(replicas=1))
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FLEETLM_CACHE": str(tmp_path / "cache")}
    args = ["serve", "--config", str(cfg), "--address", address, "--port", str(port)]
    proc = subprocess.Popen(
        [*CLI, *args, "--admin-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        _until(lambda: any("Ctrl-C to stop" in line for line in lines), timeout_s=180)
        nodes.head_node.kill_gcs_server()  # the banner is out: serve is watching
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("fleetlm serve did not notice:\n" + "".join(lines)[-3000:])
        reader.join(10)
        output = "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
        nodes.shutdown()
    assert proc.returncode == 1, output[-3000:]
    assert f"Ray at {address} is gone" in output
