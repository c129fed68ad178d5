"""The controller is killed under load and Ray restarts it (issue 13): every request in flight
completes with all its tokens (a ledger: each ends exactly once), the restarted controller
rebuilds the same replicas from their re-registration, and new requests are served."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator

import httpx
import pytest

from .conftest import tiny_config_yaml
from .test_api import _free_port, _wait_healthy

N, MAX_TOKENS = 12, 400


@pytest.fixture(scope="module")
def stack(ray_local: None) -> Iterator[object]:
    from orchestrator.api.launch import ServeOptions, start_stack
    from orchestrator.config.load import parse_config

    cfg = parse_config(tiny_config_yaml(replicas=2, http_port=_free_port()))
    opts = ServeOptions(config=cfg, http_path="direct", admin_port=0, write_admin_files=False)
    st = start_stack(opts)
    try:
        _wait_healthy(st.base_url)
        yield st
    finally:
        st.shutdown()


def _replicas(controller: object, token: str) -> set[str]:
    import ray

    url = ray.get(controller.admin_url.remote(), timeout=30)  # a restart may pick a new port
    r = httpx.get(f"{url}/admin/v1/replicas", headers={"Authorization": f"Bearer {token}"})
    return {x["id"] for x in r.json()["replicas"] if x["state"] == "ready"}


def test_requests_survive_a_controller_restart_under_load(stack: object) -> None:
    import ray

    from orchestrator.controller.settings import CONTROLLER_NAME, NAMESPACE

    token = stack.cluster.admin_token.value
    controller = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    before = _replicas(controller, token)
    assert len(before) == 2
    body = {"model": "fleetlm/tiny-llama", "prompt": [5, 6, 7], "max_tokens": MAX_TOKENS}
    body["ignore_eos"] = True

    def one(i: int) -> tuple[int, tuple[httpx.Response, float]]:
        r = httpx.post(f"{stack.base_url}/v1/completions", json=body, timeout=180)
        return i, (r, time.monotonic())

    with concurrent.futures.ThreadPoolExecutor(N) as pool:
        pending = pool.map(one, range(N))
        time.sleep(0.5)  # let the burst be in flight before the kill
        ray.kill(controller, no_restart=False)  # a crash: Ray restarts the actor
        fault_at = time.monotonic()
        ledger = dict(pending)
    assert len(ledger) == N
    assert sum(end > fault_at for _, end in ledger.values()) >= N // 2  # in flight at the fault
    for i, (r, _) in ledger.items():
        assert r.status_code == 200, (i, r.status_code, r.text)
        assert r.json()["usage"]["completion_tokens"] == MAX_TOKENS
    deadline = time.monotonic() + 60
    while True:  # polling the restarted controller as it re-adopts its replicas
        try:
            if _replicas(controller, token) == before:
                break
        except (httpx.HTTPError, ray.exceptions.RayError):
            pass
        assert time.monotonic() < deadline, "the restarted controller never rebuilt its replicas"
        time.sleep(0.25)
    r = httpx.post(f"{stack.base_url}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200
