"""The controller goes away: the ingress keeps serving on its last view, replicas keep running.

The whole stack (`start_stack`, as `fleetlm serve` runs it) with one replica; the controller
actor is killed for good (no restart), then requests still flow through the OpenAI API and
/health stays 200 (it can serve) and says the controller does not answer. Shutdown still cleans
up every actor.
"""

from __future__ import annotations

import time

import httpx
import ray

from .conftest import free_port, tiny_config_yaml

MODEL = "fleetlm/tiny-llama"
BODY = {"model": MODEL, "prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0.0}


def _until(check: object, timeout_s: float = 60.0) -> httpx.Response:
    """Polls `check()` (a response or None) until it returns a response."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()  # type: ignore[operator]
        if got is not None:
            return got
        time.sleep(0.2)  # the stack is changing state under us
    raise AssertionError("condition not met in time")


def _health(url: str, status: int) -> httpx.Response | None:
    try:
        r = httpx.get(f"{url}/health", timeout=10)
    except httpx.HTTPError:
        return None
    return r if r.status_code == status else None


def _controller_down(url: str) -> dict | None:
    r = _health(url, 200)
    return r.json() if r is not None and r.json()["controller"] is False else None


def test_ingress_serves_through_a_controller_outage(ray_local: None) -> None:
    from orchestrator.api.launch import ServeOptions, start_stack
    from orchestrator.config.load import parse_config
    from orchestrator.controller.settings import CONTROLLER_NAME, NAMESPACE

    cfg = parse_config(tiny_config_yaml(replicas=1, http_port=free_port()))
    stack = start_stack(ServeOptions(config=cfg, admin_port=0, write_admin_files=False))
    try:
        url = stack.base_url
        _until(lambda: _health(url, 200))
        before = httpx.post(f"{url}/v1/completions", json=BODY, timeout=60)
        assert before.status_code == 200, before.text

        ray.kill(ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE), no_restart=True)
        # Health means "can serve": still 200, with the controller's state beside it.
        down = _until(lambda: _controller_down(url))
        assert down["ok"] is True and down["replica_answering"] is not None
        assert down["replicas_healthy"] == 1  # the last view still lists the replica

        for _ in range(3):
            after = httpx.post(f"{url}/v1/completions", json=BODY, timeout=60)
            assert after.status_code == 200, after.text
            # Greedy on the same replica: the outage changes nothing in what is served.
            assert after.json()["choices"][0]["text"] == before.json()["choices"][0]["text"]
    finally:
        stack.shutdown()
    from orchestrator.controller.backend import RayBackend

    assert RayBackend().list_replicas() == []  # the replica did not outlive the shutdown
