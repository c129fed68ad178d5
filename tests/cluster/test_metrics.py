"""Prometheus metrics of a running CPU cluster: after real traffic (completions streamed and not,
one through a LoRA adapter, one live-migrated, one refused), every metric the ingress and the
controller export appears in their scrapes with a plausible value. The controller's /metrics
sits behind the admin token like every admin route."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import free_port, started_stack, tiny_config_yaml
from .test_lora_stack import SPECS, _save_adapter

MODEL = "fleetlm/tiny-llama"
ADAPTER = "sql"
# Longer than a few KV blocks (16 tokens each), sent several times: some land on a replica
# that already holds its blocks, so the prefix cache serves part of the prompt.
SHARED_PROMPT = "The quick brown fox jumps over the lazy dog. " * 8
Samples = list[tuple[str, dict[str, str], float]]


@pytest.fixture(scope="module")
def stack(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    root = tmp_path_factory.mktemp("metrics-lora")
    rank, targets = SPECS[ADAPTER]
    _save_adapter(root / ADAPTER, rank, rank, targets, seed=0)
    text = tiny_config_yaml(replicas=2, http_port=free_port()) + (
        f"adapters:\n  max_loras: 2\n  allowed_dirs: [{root}]\n"
        f"  preload:\n    - {{name: {ADAPTER}, path: {Path(root) / ADAPTER}}}\n"
    )
    with started_stack(text) as st:
        yield st


@pytest.fixture(scope="module")
def traffic(stack: object) -> dict[str, int]:
    """Requests sent, by kind: what the scrapes are checked against."""
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="none", max_retries=0)
    for _ in range(4):
        client.completions.create(model=MODEL, prompt=SHARED_PROMPT, max_tokens=8, temperature=0)
    chunks = client.completions.create(model=MODEL, prompt="Hello", max_tokens=8, stream=True)
    assert len(list(chunks)) >= 1
    client.completions.create(model=ADAPTER, prompt="SELECT", max_tokens=4, temperature=0)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="x", max_tokens=2, temperature=-5)
    stream = client.completions.create(
        model=MODEL, prompt="A request that moves", max_tokens=200, temperature=0, stream=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    moved = None
    with stack.cluster.admin() as admin:
        for i, chunk in enumerate(stream):
            if moved is None and i >= 10:
                moved = admin.migrate(chunk.id)  # answers once the migration has ended
    assert moved is not None and moved["outcome"] == "committed", moved
    return {"base_ok": 6, "adapter_ok": 1, "bad": 1}


def _parse(text: str) -> Samples:
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def _sum(samples: Samples, name: str, **labels: str) -> float:
    found = [v for n, lab, v in samples if n == name and labels.items() <= lab.items()]
    assert found, f"{name}{labels} is not in the scrape"
    return sum(found)


def test_ingress_metrics_after_traffic(stack: object, traffic: dict[str, int]) -> None:
    s = _parse(httpx.get(f"{stack.base_url}/metrics", timeout=10).text)
    assert all(lab.get("ingress") for _, lab, _ in s), "every series names its ingress process"
    ok = _sum(s, "fleetlm_requests_total", endpoint="/v1/completions", status="200", model=MODEL)
    assert ok >= traffic["base_ok"]
    assert _sum(s, "fleetlm_requests_total", status="200", model=ADAPTER) >= traffic["adapter_ok"]
    assert _sum(s, "fleetlm_requests_total", status="400") >= traffic["bad"]
    assert _sum(s, "fleetlm_errors_total", code="400") >= traffic["bad"]
    assert _sum(s, "fleetlm_prompt_tokens_total", model=MODEL) > 0
    assert _sum(s, "fleetlm_generation_tokens_total", model=MODEL) >= 200
    assert _sum(s, "fleetlm_generation_tokens_total", model=ADAPTER) > 0
    sent = traffic["base_ok"] + traffic["adapter_ok"]
    assert _sum(s, "fleetlm_time_to_first_token_seconds_count") >= sent
    assert _sum(s, "fleetlm_e2e_request_latency_seconds_count") >= sent
    assert _sum(s, "fleetlm_time_per_output_token_seconds_count") >= sent
    tpot = _sum(s, "fleetlm_time_per_output_token_seconds_sum")
    assert 0 < tpot / _sum(s, "fleetlm_time_per_output_token_seconds_count") < 5
    assert _sum(s, "fleetlm_route_decision_seconds_count") >= sent
    assert _sum(s, "fleetlm_client_aborts_total") >= 0


def _controller(stack: object, token: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{stack.admin_url}/metrics", headers=headers, timeout=10)


def test_controller_metrics_need_the_admin_token(stack: object) -> None:
    assert _controller(stack, None).status_code == 401
    assert _controller(stack, "not-the-token").status_code == 401


def test_controller_metrics_after_traffic(stack: object, traffic: dict[str, int]) -> None:
    token = stack.cluster.admin_token.value
    deadline = time.monotonic() + 10
    while True:  # the replicas' counters reach the controller with their next load report
        r = _controller(stack, token)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        s = _parse(r.text)
        if _sum(s, "fleetlm_replica_prompt_tokens_total") > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.25)  # one report interval
    assert _sum(s, "fleetlm_replicas_healthy") == 2
    assert _sum(s, "fleetlm_replicas", state="ready") == 2
    assert _sum(s, "fleetlm_replicas_desired") == 2
    replicas = {lab["replica"] for n, lab, _ in s if n == "fleetlm_replica_kv_blocks_capacity"}
    assert len(replicas) == 2
    for rid in replicas:
        assert _sum(s, "fleetlm_replica_kv_blocks_capacity", replica=rid) > 0
        assert _sum(s, "fleetlm_replica_state", replica=rid, state="ready") == 1
        assert 0 <= _sum(s, "fleetlm_replica_kv_usage_ratio", replica=rid) <= 1
    assert all(lab["node"] for n, lab, _ in s if n == "fleetlm_replica_kv_blocks_capacity")
    for name in (
        "fleetlm_replica_running_requests",
        "fleetlm_replica_waiting_requests",
        "fleetlm_replica_kv_blocks_used",
        "fleetlm_replica_kv_blocks_free",
        "fleetlm_replica_preemptions_total",
        "fleetlm_replica_step_time_seconds",
        "fleetlm_replica_adapter_evictions_total",
    ):
        assert _sum(s, name) >= 0
    # Decoding ran. Not ">= the tokens generated": batched requests share steps, and a greedy
    # request may end at EOS before max_tokens (a fresh-clone CI run read 194 for 200).
    assert _sum(s, "fleetlm_replica_steps_total") >= 8
    assert _sum(s, "fleetlm_replica_prompt_tokens_total") > 0
    assert _sum(s, "fleetlm_replica_prefix_hit_tokens_total") > 0  # SHARED_PROMPT, 4 times
    assert _sum(s, "fleetlm_replica_adapters_loaded") == 2  # sql, on both replicas
    assert _sum(s, "fleetlm_replica_adapter_slots") == 4
    assert _sum(s, "fleetlm_replica_adapter_loads_total") >= 1
    assert _sum(s, "fleetlm_replica_adapters_resident") >= 1
    assert _sum(s, "fleetlm_adapter_resident", adapter=ADAPTER) >= 1
    assert _sum(s, "fleetlm_adapter_loaded", adapter=ADAPTER) == 2
    assert _sum(s, "fleetlm_adapter_requests_total", adapter=ADAPTER) >= traffic["adapter_ok"]
    assert _sum(s, "fleetlm_adapter_requests_per_second", adapter=ADAPTER) >= 0
    assert _sum(s, "fleetlm_migrations_started_total", reason="operator") >= 1
    assert _sum(s, "fleetlm_migrations_committed_total", reason="operator") >= 1
    assert _sum(s, "fleetlm_migration_downtime_seconds_count") >= 1
    assert _sum(s, "fleetlm_migration_downtime_seconds_sum") > 0
    assert _sum(s, "fleetlm_migration_duration_seconds_count") >= 1
