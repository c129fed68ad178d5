"""`fleetlm serve` as a user runs it (a subprocess joining the test Ray cluster), then
`fleetlm status` and `fleetlm bench` against it, then SIGINT shuts everything down cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .conftest import tiny_config_yaml

CLI = [sys.executable, "-m", "orchestrator.cli.main"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def test_serve_status_bench_and_clean_shutdown(ray_local: None, tmp_path: Path) -> None:
    import ray

    cfg = tmp_path / "deploy.yaml"
    cfg.write_text(tiny_config_yaml(replicas=1))  # http_port 0 in the file; --port overrides
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    gcs = ray.get_runtime_context().gcs_address
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*CLI, "serve", "--config", str(cfg), "--address", gcs, "--port", str(port)],
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

        status = subprocess.run(
            [*CLI, "status", "--address", gcs], capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0, status.stderr
        assert "True" in status.stdout and "replica" in status.stdout

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
    assert not _controller_alive()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/health", timeout=2)
