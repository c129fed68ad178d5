"""The controller is killed under load and Ray restarts it (issue 13): every request in flight
completes with all its tokens (a ledger: each ends exactly once), the restarted controller
rebuilds the same replicas from their re-registration, and new requests are served."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from .conftest import burst_through_a_fault, free_port, started_stack, tiny_config_yaml

N, MAX_TOKENS = 12, 400


@pytest.fixture(scope="module")
def stack(ray_local: None) -> Iterator[object]:
    with started_stack(
        tiny_config_yaml(replicas=2, http_port=free_port()), http_path="direct"
    ) as st:
        yield st


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
    # a crash: Ray restarts the actor while the burst is in flight
    burst_through_a_fault(
        stack.base_url, N, MAX_TOKENS, lambda: ray.kill(controller, no_restart=False), 0.5
    )
    deadline = time.monotonic() + 60
    while True:  # polling the restarted controller as it re-adopts its replicas
        try:
            if _replicas(controller, token) == before:
                break
        except (httpx.HTTPError, ray.exceptions.RayError):
            pass
        assert time.monotonic() < deadline, "the restarted controller never rebuilt its replicas"
        time.sleep(0.25)
    body = {"model": "fleetlm/tiny-llama", "prompt": [5, 6, 7], "max_tokens": 4}
    r = httpx.post(f"{stack.base_url}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200
