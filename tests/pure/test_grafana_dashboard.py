"""helm/grafana/fleetlm-dashboard.json is valid JSON whose queries use only metrics the code
exports (a renamed metric breaks this test, not a panel in production)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from orchestrator.controller.migrations import MigrationTally
from orchestrator.controller.state import ControllerState
from orchestrator.metrics.controller import render_controller_metrics
from orchestrator.metrics.ingress import IngressMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "helm" / "grafana" / "fleetlm-dashboard.json"
# Ray's own node metrics (its metrics export port), for the node panels the issue asks for.
EXTERNAL = {"ray_node_cpu_utilization", "ray_node_gpus_utilization", "ray_node_mem_used"}
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("",), "gauge": ("",)}


class _Migrations:
    tally = MigrationTally()


class _EmptyCore:
    """A controller with no replica, migration or adapter: every family still prints its TYPE."""

    state = ControllerState(1.0)
    migrations = _Migrations()
    desired_replicas = 0

    def adapter_listing(self) -> list[dict[str, Any]]:
        return []


def exported_names() -> set[str]:
    """Every series name the ingress and the controller expose, from their `# TYPE` lines
    (printed for every family, with or without samples)."""
    text = IngressMetrics("x").render().decode() + render_controller_metrics(_EmptyCore()).decode()
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        names.update(name + suffix for suffix in _SUFFIXES[kind])
    return names


def _targets(panels: list[dict[str, Any]]) -> list[str]:
    exprs = []
    for panel in panels:
        exprs += [t["expr"] for t in panel.get("targets", [])]
        exprs += _targets(panel.get("panels", []))
    return exprs


def test_dashboard_queries_use_exported_metrics_only() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = _targets(dashboard["panels"])
    assert len(exprs) >= 20
    known = exported_names() | EXTERNAL
    used = set()
    for expr in exprs:
        names = set(re.findall(r"\b(?:fleetlm|ray)_[a-z0-9_]+", expr))
        assert names, f"no metric in {expr!r}"
        assert names <= known, f"{expr!r} uses {names - known}, which nothing exports"
        used |= names
    # The panels the issue asks for are there.
    for name in (
        "fleetlm_replicas_healthy",
        "fleetlm_time_to_first_token_seconds_bucket",
        "fleetlm_time_per_output_token_seconds_bucket",
        "fleetlm_e2e_request_latency_seconds_bucket",
        "fleetlm_replica_running_requests",
        "fleetlm_replica_waiting_requests",
        "fleetlm_replica_preemptions_total",
        "fleetlm_replica_kv_usage_ratio",
        "fleetlm_replica_prefix_hit_tokens_total",
        "fleetlm_generation_tokens_total",
        "fleetlm_migration_downtime_seconds_bucket",
        "fleetlm_adapter_resident",
    ):
        assert name in used, f"no panel shows {name}"


def test_panels_have_unique_ids_and_a_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert any(v["type"] == "datasource" for v in dashboard["templating"]["list"])
