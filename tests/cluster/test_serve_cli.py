"""`fleetlm serve` as a user runs it (a subprocess joining the test Ray cluster), then the admin
commands (`fleetlm status | cordon | uncordon | scale | requests | events`, finding the admin API
and its generated token as a user's shell would) and `fleetlm bench` against it, then SIGINT
shuts everything down cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .conftest import free_port, tiny_config_yaml

CLI = [sys.executable, "-m", "orchestrator.cli.main"]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "fleetlm serve exited early"
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)  # polling a server that is starting up
    raise AssertionError("fleetlm serve never became healthy")


def _controller_alive() -> bool:
    import ray

    from orchestrator.controller.settings import CONTROLLER_NAME, NAMESPACE

    try:
        ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:
        return False
    return True


def _becomes_ready(cli: object) -> bool:
    """An uncordon's answer may still show "cordoned" until the replica's next report."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if json.loads(cli("status", "--json").stdout)["replicas"][0]["state"] == "ready":
            return True
        time.sleep(0.2)  # the next load report lifts it
    return False


def test_serve_status_bench_and_clean_shutdown(ray_local: None, tmp_path: Path) -> None:
    import ray

    cfg = tmp_path / "deploy.yaml"
    cfg.write_text(tiny_config_yaml(replicas=1))  # http_port 0 in the file; --port overrides
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    gcs = ray.get_runtime_context().gcs_address
    cache = tmp_path / "cache"  # where serve leaves the admin URL and token for the CLI
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FLEETLM_CACHE": str(cache)}
    env.pop("FLEETLM_ADMIN_TOKEN", None)
    admin_port = free_port()
    proc = subprocess.Popen(
        [
            *CLI,
            "serve",
            "--config",
            str(cfg),
            "--address",
            gcs,
            "--port",
            str(port),
            "--admin-port",
            str(admin_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        _wait_healthy(url, proc)
        out = httpx.post(
            f"{url}/v1/completions",
            json={"model": "fleetlm/tiny-llama", "prompt": "hi", "max_tokens": 3},
            timeout=30,
        )
        assert out.status_code == 200 and out.json()["usage"]["completion_tokens"] >= 1

        token = (cache / "admin-token").read_text().strip()
        assert (cache / "admin-token").stat().st_mode & 0o777 == 0o600
        assert (cache / "admin-url").read_text().strip() == f"http://127.0.0.1:{admin_port}"

        def cli(*args: str) -> subprocess.CompletedProcess:
            done = subprocess.run(
                [*CLI, *args], capture_output=True, text=True, timeout=60, env=env
            )
            assert done.returncode == 0, done.stdout + done.stderr
            return done

        status = cli("status")
        assert "ready" in status.stdout and "desired replicas: 1" in status.stdout
        (replica,) = json.loads(cli("status", "--json").stdout)["replicas"]
        assert "cordoned" in cli("cordon", replica["id"]).stdout
        assert json.loads(cli("status", "--json").stdout)["replicas"][0]["state"] == "cordoned"
        assert "ready" in cli("uncordon", replica["id"]).stdout or _becomes_ready(cli)
        assert "2 replicas desired" in cli("scale", "2").stdout
        deadline = time.monotonic() + 120
        while (
            sum(
                r["state"] == "ready"
                for r in json.loads(cli("status", "--json").stdout)["replicas"]
            )
            < 2
        ):
            assert time.monotonic() < deadline, cli("status").stdout
            time.sleep(0.5)  # a second replica is starting
        assert "no running or waiting requests" in cli("requests").stdout
        events = cli("events").stdout
        assert "replica_joined" in events and "Cordon" in events and "config_applied" in events
        refused = subprocess.run(
            [*CLI, "status", "--token", "wrong-token-0123456789"],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert refused.returncode == 1 and "invalid admin token" in refused.stderr
        assert token not in refused.stderr

        result = tmp_path / "bench" / "result.json"
        bench = subprocess.run(
            [*CLI, "bench", "--url", url, "--rate", "20", "--num-requests", "6",
             "--input-mean", "16", "--output-mean", "8", "--slo-ttft-ms", "5000",
             "--out", str(result)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert bench.returncode == 0, bench.stdout + bench.stderr
        assert "TTFT" in bench.stdout and "goodput" in bench.stdout
        data = json.loads(result.read_text())
        assert data["completed"] == 6 and data["ttft_ms"]["p50"] > 0
        assert result.with_suffix(".png").stat().st_size > 0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            pytest.fail(f"fleetlm serve did not stop on SIGINT:\n{output[-3000:]}")
    assert proc.returncode == 0, output[-3000:]
    assert f"OpenAI API  {url}/v1" in output and "shutting down" in output
    assert f"dashboard   http://127.0.0.1:{admin_port}/?token={token}" in output
    assert f"admin API   http://127.0.0.1:{admin_port}/admin/v1/" in output
    assert not _controller_alive()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/health", timeout=2)
