"""The declarative entry point (orchestrator.app:build_app) as `serve run` uses it: it creates
the controller, the ingress serves through Ray Serve's proxy, a redeploy with a changed file
updates the running controller in place (no second controller), and a redeploy changing a field
fixed while running fails the build naming that field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import free_port, tiny_config_yaml, wait_healthy


@pytest.fixture
def proxy_port(ray_local: None) -> Iterator[int]:
    from ray import serve

    from orchestrator.controller.launcher import stop_cluster

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield port
    finally:
        serve.shutdown()
        stop_cluster()


def _deploy(path: Path) -> None:
    from ray import serve

    from orchestrator.api.deployment import APP_NAME
    from orchestrator.app import build_app

    serve.run(build_app({"config": str(path)}), name=APP_NAME, route_prefix="/", blocking=False)


def test_build_app_deploys_then_redeploys_in_place(proxy_port: int, tmp_path: Path) -> None:
    import ray

    from orchestrator.controller.settings import CONTROLLER_NAME, NAMESPACE

    path = tmp_path / "fleet.yaml"
    path.write_text(tiny_config_yaml(replicas=1, policy="round_robin"))
    _deploy(path)
    url = f"http://127.0.0.1:{proxy_port}"
    wait_healthy(url)
    body = {"model": "fleetlm/tiny-llama", "prompt": [5, 6, 7], "max_tokens": 4}
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
    controller = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    head = next(n["NodeID"] for n in ray.nodes() if "node:__internal_head__" in n["Resources"])
    where = controller.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id())
    assert ray.get(where, timeout=30) == head  # where the chart's admin Service points

    # A changed file: applied to the same controller, which now runs the new policy.
    path.write_text(tiny_config_yaml(replicas=1, policy="least_load"))
    _deploy(path)
    assert ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)._actor_id == controller._actor_id
    applied = ray.get(controller.apply_config.remote("{}"), timeout=30)  # an empty update
    assert "dispatch policy least_load" in applied, applied
    assert httpx.post(f"{url}/v1/completions", json=body, timeout=60).status_code == 200

    # A field fixed while running: the build fails naming it; nothing changes.
    path.write_text(tiny_config_yaml(replicas=1).replace("num_cpus: 1.0", "num_cpus: 2.0"))
    with pytest.raises(ValueError, match=r"replicas\.resources"):
        _deploy(path)
    assert httpx.post(f"{url}/v1/completions", json=body, timeout=60).status_code == 200


def test_build_app_refuses_unknown_args() -> None:
    from orchestrator.app import build_app

    with pytest.raises(ValueError, match=r"args: unknown \['cofnig'\]"):
        build_app({"cofnig": "x.yaml"})


def test_replicas_that_cannot_start_fail_the_start_with_their_error(
    ray_local: None, tmp_path: Path
) -> None:
    """A wrong model.path fails every replica the same way: starting gives up after two tries
    with the replica's own error, instead of retrying for minutes and timing out."""
    from orchestrator.config.load import parse_config
    from orchestrator.controller.launcher import start_cluster

    text = tiny_config_yaml(replicas=1).replace("fleetlm/tiny-llama", str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match=r"replicas: 2 failed to start; the last died while") as e:
        start_cluster(parse_config(text), admin_port=0)
    assert str(tmp_path / "nothing") in str(e.value)
