"""Prometheus metrics of one ingress process, on a private registry (no process-global state).

Every series carries the constant label `ingress` (this process's identity): several ingress
replicas each count their own requests, and a scrape reaches one of them, so their series must
stay apart for sum(rate(...)) across them to be right (docs/metrics.md).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Latency buckets in seconds: sub-ms routing up to long generations.
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Inter-token latency: a decode step of a batch, from ~1 ms (small model, GPU) to seconds.
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5)
# Routing runs the dispatch policy on a local view: microseconds, unless something is wrong.
_ROUTE_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.1)


def process_identity() -> str:
    """This process's `ingress` label where Ray Serve gives none: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


class _ConstLabels(Collector):
    """The samples of `inner` with `labels` added: prometheus_client's metrics have no constant
    labels, and a label passed at every call site would be easy to forget at one."""

    def __init__(self, inner: CollectorRegistry, labels: Mapping[str, str]) -> None:
        self._inner = inner
        self._labels = dict(labels)

    def collect(self) -> Iterator[Metric]:
        for metric in self._inner.collect():
            out = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            for s in metric.samples:
                out.add_sample(s.name, {**self._labels, **s.labels}, s.value, s.timestamp)
            yield out


class IngressMetrics:
    def __init__(self, ingress: str | None = None) -> None:
        """`ingress`: this process's stable identity (e.g. its Ray Serve replica id)."""
        self.ingress = ingress or process_identity()
        r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "fleetlm_requests",
            "HTTP API requests by endpoint, status and model (base or LoRA adapter)",
            ["endpoint", "status", "model"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "fleetlm_prompt_tokens", "prompt tokens of finished requests", ["model"], registry=r
        )
        self.generation_tokens = Counter(
            "fleetlm_generation_tokens",
            "generated tokens of finished requests",
            ["model"],
            registry=r,
        )
        self.errors = Counter("fleetlm_errors", "API errors by status code", ["code"], registry=r)
        self.aborts = Counter(
            "fleetlm_client_aborts", "requests aborted by a client disconnect", registry=r
        )
        self.ttft = Histogram(
            "fleetlm_time_to_first_token_seconds",
            "time from request arrival to the first token",
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "fleetlm_time_per_output_token_seconds",
            "time per output token after the first (inter-token latency) of a finished request",
            buckets=_TPOT_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "fleetlm_e2e_request_latency_seconds",
            "time from request arrival to the last token",
            buckets=_E2E_BUCKETS,
            registry=r,
        )
        self.route = Histogram(
            "fleetlm_route_decision_seconds",
            "time to pick a replica for a request (prefix hashes and the dispatch policy)",
            buckets=_ROUTE_BUCKETS,
            registry=r,
        )
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_ConstLabels(r, {"ingress": self.ingress}))

    def observe_request(self, endpoint: str, status: int, model: str = "") -> None:
        """`model`: the served model or adapter name once resolved ("" before: a client's
        unresolved `model` string must not become a label value, their number is unbounded)."""
        self.requests.labels(endpoint=endpoint, status=str(status), model=model).inc()
        if status >= 400:
            self.errors.labels(code=str(status)).inc()

    def observe_tokens(self, prompt: int, generated: int, model: str = "") -> None:
        self.prompt_tokens.labels(model=model).inc(prompt)
        self.generation_tokens.labels(model=model).inc(generated)

    def observe_finished(
        self,
        model: str,
        prompt_tokens: int,
        generated_per_choice: int,
        generated: int,
        arrival: float,
        first_token: float,
        now: float,
    ) -> None:
        """A request that ended normally: tokens, E2E and TPOT (times: perf_counter seconds).

        TPOT = (E2E - TTFT) / (tokens - 1), the tokens of one choice: n choices decode side by
        side, so a request with n > 1 has the inter-token latency of one of them.
        """
        self.observe_tokens(prompt_tokens, generated, model)
        self.e2e.observe(now - arrival)
        if generated_per_choice > 1:
            self.tpot.observe(max(0.0, now - first_token) / (generated_per_choice - 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)
