"""Adapter placement in a running controller (policies/adapters.py through
orchestrator/controller/placement.py): a burst of requests for one adapter is seen as a rate,
placement puts the adapter in both replicas' device memory, and once the requests stop it is
taken off every device, each step an `adapter_placed` event with the policy's reason."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from .conftest import free_port, started_stack, tiny_config_yaml
from .test_lora_stack import _save_adapter

# Fast on purpose: one request per second already wants two holders; 4 s without requests
# takes the adapter off the devices.
PLACEMENT = (
    "  placement: {interval_s: 0.2, replica_rps: 0.5, settle_s: 0.5, hold_s: 1.0, "
    "idle_s: 4.0, window_s: 3.0}\n"
)


@pytest.fixture(scope="module")
def stack(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    root = tmp_path_factory.mktemp("placement-root")
    _save_adapter(root / "hot", 4, 8, ["q_proj", "v_proj"], seed=3)
    text = tiny_config_yaml(replicas=2, http_port=free_port()) + (
        f"adapters:\n  max_loras: 2\n  allowed_dirs: [{root}]\n"
        f"  preload:\n    - {{name: hot, path: {root / 'hot'}}}\n" + PLACEMENT
    )
    with started_stack(text, http_path="direct") as st:
        yield st


def _until(check: Callable[[], object], timeout_s: float = 30.0) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)  # polling the controller's admin view as placement acts
    raise AssertionError("timed out")


def test_demand_puts_an_adapter_on_both_devices_and_idleness_takes_it_off(stack: object) -> None:
    from orchestrator.admin.client import AdminClient

    with AdminClient(stack.admin_url, stack.cluster.admin_token.value) as admin:

        def hot() -> dict:
            return next(a for a in admin.adapters() if a["name"] == "hot")

        _until(lambda: len(hot()["loaded_on"]) == 2)
        body = {"model": "hot", "prompt": [5, 6, 7], "max_tokens": 2, "ignore_eos": True}
        deadline = time.monotonic() + 30
        # Keep the demand up until placement has the adapter on both devices.
        while len(hot()["resident_on"]) < 2:
            assert time.monotonic() < deadline, f"never on both devices: {hot()}"
            r = httpx.post(f"{stack.base_url}/v1/completions", json=body, timeout=30)
            assert r.status_code == 200, r.text
        assert hot()["requests_per_s"] > 0.5

        # No more requests: the window empties, and after idle_s it leaves every device.
        _until(lambda: hot()["resident_on"] == [], timeout_s=30)
        assert hot()["requests_per_s"] == 0
        events = [e for e in admin.events(limit=1000) if e["kind"] == "adapter_placed"]
        on = [e for e in events if "onto the device" in e["message"]]
        off = [e for e in events if "off the device" in e["message"]]
        # Routing alone may have put it on both devices; what placement added says why.
        assert all(e["ok"] and "req/s" in e["message"] for e in on), events
        assert {e["replica"] for e in off} == set(hot()["loaded_on"]), events
        assert all(e["ok"] for e in off) and any("no requests" in e["message"] for e in off)
