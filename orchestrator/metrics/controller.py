"""The controller's Prometheus metrics: the fleet as the controller sees it, derived at each scrape.

`ControllerCollector` keeps nothing between scrapes: every value comes from the controller's
state when Prometheus asks (the replicas' last load reports, their derived states, the migration
tally, the adapter catalog). Replica counters (steps, preemptions, adapter loads, prompt and
prefix-hit tokens) are the replicas' own cumulative counts, exported as counters so Prometheus
computes rates; a restarted replica starts them again from zero, which Prometheus reads as a
counter reset. Served on the admin port's GET /metrics (behind the admin token).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Protocol

from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from orchestrator.controller.migrations import MigrationTally
from orchestrator.controller.state import ControllerState
from orchestrator.metrics.tally import BucketTally
from policies.cluster_view import ReplicaLoad, ReplicaState

CONTENT_TYPE = CONTENT_TYPE_LATEST
_REPLICA = ["replica", "node"]


class _MigrationsLike(Protocol):
    tally: MigrationTally


class ControllerLike(Protocol):
    """What the collector reads of orchestrator.controller.service.ControllerCore."""

    state: ControllerState
    migrations: _MigrationsLike

    @property
    def desired_replicas(self) -> int: ...

    def adapter_listing(self) -> list[dict[str, Any]]: ...


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def _counter(name: str, doc: str, labels: list[str] | None = None) -> CounterMetricFamily:
    # The name without _total: prometheus_client appends it when it renders a counter.
    return CounterMetricFamily(name, doc, labels=labels)


def _usage(load: ReplicaLoad) -> float:
    if load.kv_blocks_total <= 0:
        return 0.0
    return max(0, load.kv_blocks_total - load.kv_blocks_free) / load.kv_blocks_total


# Per-replica values read off a ReplicaLoad: (metric name, help, value of a load).
_Read = Callable[[ReplicaLoad], float]
_LOAD_GAUGES: tuple[tuple[str, str, _Read], ...] = (
    ("fleetlm_replica_running_requests", "requests running", lambda x: x.running),
    ("fleetlm_replica_waiting_requests", "requests waiting", lambda x: x.waiting),
    ("fleetlm_replica_max_running_requests", "max requests run at once", lambda x: x.max_running),
    (
        "fleetlm_replica_tokens_in_flight",
        "tokens of the running requests",
        lambda x: x.tokens_in_flight,
    ),
    ("fleetlm_replica_kv_blocks_free", "KV cache blocks free", lambda x: x.kv_blocks_free),
    (
        "fleetlm_replica_kv_blocks_used",
        "KV cache blocks in use",
        lambda x: max(0, x.kv_blocks_total - x.kv_blocks_free),
    ),
    ("fleetlm_replica_kv_blocks_capacity", "KV cache blocks in all", lambda x: x.kv_blocks_total),
    ("fleetlm_replica_kv_usage_ratio", "KV cache blocks in use / in all (0..1)", _usage),
    (
        "fleetlm_replica_step_time_seconds",
        "duration of the replica's last engine step",
        lambda x: x.step_time_ms / 1e3,
    ),
    (
        "fleetlm_replica_migrating_out",
        "migrations it is the source of, now",
        lambda x: x.migrating_out,
    ),
    (
        "fleetlm_replica_migrating_in",
        "migrations it is the target of, now",
        lambda x: x.migrating_in,
    ),
    (
        "fleetlm_replica_adapters_loaded",
        "LoRA adapters it serves (host memory)",
        lambda x: len(x.adapters_loaded),
    ),
    (
        "fleetlm_replica_adapters_resident",
        "LoRA adapters in its device memory",
        lambda x: len(x.adapters_resident),
    ),
    (
        "fleetlm_replica_adapter_slots",
        "LoRA adapters its device memory holds at once",
        lambda x: x.adapter_slots,
    ),
)
_LOAD_COUNTERS: tuple[tuple[str, str, _Read], ...] = (
    ("fleetlm_replica_steps", "engine steps since the replica started", lambda x: x.num_steps),
    (
        "fleetlm_replica_preemptions",
        "requests preempted (KV cache full)",
        lambda x: x.num_preemptions,
    ),
    (
        "fleetlm_replica_adapter_loads",
        "LoRA adapters copied into device memory",
        lambda x: x.adapter_loads,
    ),
    (
        "fleetlm_replica_adapter_evictions",
        "LoRA adapters evicted from device memory",
        lambda x: x.adapter_evictions,
    ),
    ("fleetlm_replica_migrated_bytes", "KV bytes sent for migrations", lambda x: x.migrated_bytes),
    (
        "fleetlm_replica_prompt_tokens",
        "prompt tokens admitted (looked up in the prefix cache)",
        lambda x: x.prompt_tokens_total,
    ),
    (
        "fleetlm_replica_prefix_hit_tokens",
        "prompt tokens served from the prefix cache",
        lambda x: x.prefix_hit_tokens_total,
    ),
)


class ControllerCollector(Collector):
    def __init__(self, core: ControllerLike) -> None:
        self._core = core

    def collect(self) -> Iterator[Metric]:
        yield from self._replicas()
        yield from self._migrations(self._core.migrations.tally)
        yield from self._adapters()

    def _replicas(self) -> Iterator[Metric]:
        records = sorted(self._core.state.records.values(), key=lambda r: r.replica_id)
        by_state = dict.fromkeys(ReplicaState, 0)
        for record in records:
            by_state[record.state] += 1
        count = _gauge("fleetlm_replicas", "replicas the controller knows, by state", ["state"])
        for state, n in by_state.items():
            count.add_metric([state.value], n)
        yield count
        yield GaugeMetricFamily(
            "fleetlm_replicas_healthy",
            "replicas that take new requests (state ready)",
            value=by_state[ReplicaState.READY],
        )
        yield GaugeMetricFamily(
            "fleetlm_replicas_desired",
            "replicas the deployment wants",
            value=self._core.desired_replicas,
        )
        state = _gauge(
            "fleetlm_replica_state",
            "1 for the replica's current state, 0 for the others",
            [*_REPLICA, "state"],
        )
        gauges = [(_gauge(name, doc, _REPLICA), get) for name, doc, get in _LOAD_GAUGES]
        counters = [(_counter(name, doc, _REPLICA), get) for name, doc, get in _LOAD_COUNTERS]
        for record in records:
            node = record.report.identity.node_id if record.report is not None else ""
            labels = [record.replica_id, node]
            for s in ReplicaState:
                state.add_metric([*labels, s.value], float(s is record.state))
            if record.report is None:
                continue  # starting: nothing reported yet
            load = record.report.load
            for family, get in (*gauges, *counters):
                family.add_metric(labels, float(get(load)))
        yield state
        for family, _ in (*gauges, *counters):
            yield family

    def _migrations(self, tally: MigrationTally) -> Iterator[Metric]:
        started = _counter("fleetlm_migrations_started", "live migrations started", ["reason"])
        for reason, n in sorted(tally.started.items()):
            started.add_metric([reason], n)
        committed = _counter(
            "fleetlm_migrations_committed", "live migrations committed", ["reason"]
        )
        for reason, n in sorted(tally.committed.items()):
            committed.add_metric([reason], n)
        aborted = _counter(
            "fleetlm_migrations_aborted", "live migrations aborted", ["reason", "cause"]
        )
        for (reason, cause), n in sorted(tally.aborted.items()):
            aborted.add_metric([reason, cause], n)
        yield from (started, committed, aborted)
        yield _histogram(
            "fleetlm_migration_downtime_seconds",
            "how long a committed migration paused its request",
            tally.downtime_s,
        )
        yield _histogram(
            "fleetlm_migration_duration_seconds",
            "how long a committed migration took, staged copies included",
            tally.duration_s,
        )

    def _adapters(self) -> Iterator[Metric]:
        listing = self._core.adapter_listing()
        replicas = sorted(
            r.replica_id for r in self._core.state.records.values() if r.report is not None
        )
        resident = _gauge(
            "fleetlm_adapter_resident",
            "1 if the adapter is in the replica's device memory, else 0",
            ["adapter", "replica"],
        )
        loaded = _gauge(
            "fleetlm_adapter_loaded",
            "1 if the replica serves the adapter (host memory), else 0",
            ["adapter", "replica"],
        )
        rate = _gauge(
            "fleetlm_adapter_requests_per_second",
            "requests per second for the adapter over placement's demand window",
            ["adapter"],
        )
        for entry in listing:
            name = entry["name"]
            rate.add_metric([name], float(entry.get("requests_per_s", 0.0)))
            _flags(resident, name, replicas, entry["resident_on"])
            _flags(loaded, name, replicas, entry["loaded_on"])
        requests = _counter(
            "fleetlm_adapter_requests",
            "requests for the adapter a replica admitted",
            ["adapter", "replica"],
        )
        for record in sorted(self._core.state.records.values(), key=lambda r: r.replica_id):
            if record.report is not None:
                for name, n in sorted(record.report.load.adapter_requests.items()):
                    requests.add_metric([name, record.replica_id], n)
        yield from (resident, loaded, rate, requests)


def _flags(family: GaugeMetricFamily, adapter: str, replicas: Iterable[str], on: list[str]) -> None:
    where = set(on)
    for rid in replicas:
        family.add_metric([adapter, rid], float(rid in where))


def _histogram(name: str, doc: str, tally: BucketTally) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=tally.cumulative(), sum_value=tally.total)


def render_controller_metrics(core: ControllerLike) -> bytes:
    """The Prometheus text of the controller's metrics now (a registry per call: no globals)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ControllerCollector(core))
    return generate_latest(registry)


def metrics_route(core: ControllerLike) -> Callable[[], Awaitable[Response]]:
    """The admin app's GET /metrics handler. A coroutine on purpose: FastAPI would run a plain
    function in a thread pool, and the controller's records belong to its event loop."""

    async def metrics() -> Response:
        return Response(render_controller_metrics(core), media_type=CONTENT_TYPE)

    return metrics
