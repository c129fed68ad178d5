"""The controller's Prometheus collector over a ControllerState built in-process: every value is
derived from the records, the migration tally and the adapter listing at scrape time."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from actors.common.errors import ErrorKind, ReplicaError
from actors.common.migration import MigrationReport
from actors.common.types import LoadReport
from orchestrator.controller.migrations import (
    DRAIN,
    OPERATOR,
    REBALANCE,
    MigrationTally,
    abort_cause,
)
from orchestrator.controller.state import ControllerState
from orchestrator.metrics.controller import CONTENT_TYPE, render_controller_metrics
from orchestrator.metrics.tally import BucketTally
from policies.cluster_view import ReplicaIdentity, ReplicaLoad

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeMigrations:
    tally: MigrationTally = field(default_factory=MigrationTally)


@dataclass
class FakeCore:
    """ControllerCore's surface the collector reads (no commander, no Ray, no gRPC)."""

    state: ControllerState
    migrations: FakeMigrations = field(default_factory=FakeMigrations)
    listing: list[dict[str, Any]] = field(default_factory=list)
    desired_replicas: int = 3

    def adapter_listing(self) -> list[dict[str, Any]]:
        return self.listing


def _report(rid: str, node: str, **load: Any) -> LoadReport:
    ident = ReplicaIdentity(rid, f"10.0.0.1:{5000 + len(rid)}", node, "inc-1", 42)
    return LoadReport(ident, 1, ReplicaLoad(**load))


def _samples(core: FakeCore) -> Samples:
    text = render_controller_metrics(core).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _get(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


def _core() -> tuple[FakeCore, Clock]:
    clock = Clock()
    state = ControllerState(1.0, clock)
    state.register(
        _report(
            "r0",
            "node-a",
            running=3,
            waiting=2,
            kv_blocks_free=30,
            kv_blocks_total=120,
            step_time_ms=12.5,
            num_steps=1000,
            num_preemptions=4,
            adapters_loaded=frozenset({"sql", "poet"}),
            adapters_resident=frozenset({"sql"}),
            adapter_slots=2,
            adapter_loads=7,
            adapter_evictions=5,
            adapter_requests={"sql": 11},
            prompt_tokens_total=900,
            prefix_hit_tokens_total=300,
        )
    )
    state.register(_report("r1", "node-b", kv_blocks_free=64, kv_blocks_total=64))
    state.expect("r2")  # created, not registered: starting
    listing = [
        {"name": "poet", "loaded_on": ["r0"], "resident_on": [], "requests_per_s": 0.0},
        {"name": "sql", "loaded_on": ["r0"], "resident_on": ["r0"], "requests_per_s": 2.5},
    ]
    return FakeCore(state, listing=listing), clock


def test_replica_gauges_and_counters_come_from_the_last_reports() -> None:
    core, _ = _core()
    s = _samples(core)
    r0 = {"replica": "r0", "node": "node-a"}
    assert _get(s, "fleetlm_replica_running_requests", **r0) == 3
    assert _get(s, "fleetlm_replica_waiting_requests", **r0) == 2
    assert _get(s, "fleetlm_replica_kv_blocks_used", **r0) == 90
    assert _get(s, "fleetlm_replica_kv_blocks_free", **r0) == 30
    assert _get(s, "fleetlm_replica_kv_blocks_capacity", **r0) == 120
    assert _get(s, "fleetlm_replica_kv_usage_ratio", **r0) == 0.75
    assert _get(s, "fleetlm_replica_step_time_seconds", **r0) == 0.0125
    assert _get(s, "fleetlm_replica_steps_total", **r0) == 1000
    assert _get(s, "fleetlm_replica_preemptions_total", **r0) == 4
    assert _get(s, "fleetlm_replica_adapters_loaded", **r0) == 2
    assert _get(s, "fleetlm_replica_adapters_resident", **r0) == 1
    assert _get(s, "fleetlm_replica_adapter_loads_total", **r0) == 7
    assert _get(s, "fleetlm_replica_adapter_evictions_total", **r0) == 5
    assert _get(s, "fleetlm_replica_prompt_tokens_total", **r0) == 900
    assert _get(s, "fleetlm_replica_prefix_hit_tokens_total", **r0) == 300
    r1 = {"replica": "r1", "node": "node-b"}
    assert _get(s, "fleetlm_replica_kv_usage_ratio", **r1) == 0.0
    # A replica that has not registered has a state but no load.
    assert _get(s, "fleetlm_replica_state", replica="r2", node="", state="starting") == 1
    assert not any(
        k[0] == "fleetlm_replica_running_requests" and ("replica", "r2") in k[1] for k in s
    )


def test_replica_states_and_health_follow_the_records() -> None:
    core, clock = _core()
    s = _samples(core)
    assert _get(s, "fleetlm_replicas_healthy") == 2
    assert _get(s, "fleetlm_replicas", state="ready") == 2
    assert _get(s, "fleetlm_replicas", state="starting") == 1
    assert _get(s, "fleetlm_replicas", state="dead") == 0
    assert _get(s, "fleetlm_replicas_desired") == 3
    assert _get(s, "fleetlm_replica_state", replica="r0", node="node-a", state="ready") == 1
    assert _get(s, "fleetlm_replica_state", replica="r0", node="node-a", state="dead") == 0
    # Nothing is cached between scrapes: r1 stops reporting, the next scrape says so.
    clock.now += 5
    core.state.report(_report("r0", "node-a"))  # r0 reports (seq 1 again is fine: not older)
    core.state.mark_stale()
    s = _samples(core)
    assert _get(s, "fleetlm_replicas_healthy") == 1
    assert _get(s, "fleetlm_replica_state", replica="r1", node="node-b", state="dead") == 1


def test_adapter_residency_and_request_rates() -> None:
    core, _ = _core()
    s = _samples(core)
    assert _get(s, "fleetlm_adapter_resident", adapter="sql", replica="r0") == 1
    assert _get(s, "fleetlm_adapter_resident", adapter="sql", replica="r1") == 0
    assert _get(s, "fleetlm_adapter_resident", adapter="poet", replica="r0") == 0
    assert _get(s, "fleetlm_adapter_loaded", adapter="poet", replica="r0") == 1
    assert _get(s, "fleetlm_adapter_requests_per_second", adapter="sql") == 2.5
    assert _get(s, "fleetlm_adapter_requests_total", adapter="sql", replica="r0") == 11


def test_migration_counters_and_downtime_histogram() -> None:
    core, _ = _core()
    tally = core.migrations.tally
    ok = MigrationReport("m1", "req", "committed", downtime_ms=4.0, duration_ms=80.0)
    for reason in (OPERATOR, DRAIN, DRAIN):
        tally.started[reason] += 1
        tally.ended(reason, ok, "")
    tally.started[REBALANCE] += 1
    busy = MigrationReport(
        "m2", "req", "aborted", "this replica already runs 2 outgoing migrations"
    )
    tally.ended(REBALANCE, busy, abort_cause(busy, None))
    s = _samples(core)
    assert _get(s, "fleetlm_migrations_started_total", reason="drain") == 2
    assert _get(s, "fleetlm_migrations_committed_total", reason="operator") == 1
    assert _get(s, "fleetlm_migrations_aborted_total", reason="rebalance", cause="source_busy") == 1
    assert _get(s, "fleetlm_migration_downtime_seconds_count") == 3
    assert _get(s, "fleetlm_migration_downtime_seconds_sum") == 0.012
    assert _get(s, "fleetlm_migration_downtime_seconds_bucket", le="0.0025") == 0
    assert _get(s, "fleetlm_migration_downtime_seconds_bucket", le="0.005") == 3
    assert _get(s, "fleetlm_migration_downtime_seconds_bucket", le="+Inf") == 3
    assert _get(s, "fleetlm_migration_duration_seconds_count") == 3


def test_abort_causes_are_a_bounded_set() -> None:
    aborted = MigrationReport("m", "r", "aborted", "destination: no room for 12 blocks")
    assert abort_cause(aborted, None) == "destination"
    assert abort_cause(MigrationReport("m", "r", "aborted", "boom: xyz"), None) == "source"
    timeout = ReplicaError(ErrorKind.TIMEOUT, "no answer in 30 s")
    assert abort_cause(MigrationReport("m", "r", "aborted", str(timeout)), timeout) == "timeout"


def test_bucket_tally_is_prometheus_shaped() -> None:
    t = BucketTally((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        t.observe(v)
    assert t.cumulative() == [("0.1", 2.0), ("1.0", 3.0), ("+Inf", 4.0)]
    assert t.count == 4 and abs(t.total - 3.65) < 1e-9


def test_content_type_and_no_prometheus_in_policies_or_engine_imports() -> None:
    assert CONTENT_TYPE.startswith("text/plain")
    code = (
        "import sys, policies.cluster_view, policies.dispatch; "
        "assert 'prometheus_client' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
