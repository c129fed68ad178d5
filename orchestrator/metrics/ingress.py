"""Prometheus metrics of one ingress replica, on a private registry (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Latency buckets in seconds: sub-ms routing up to long generations.
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class IngressMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "fleetlm_requests", "HTTP API requests", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter(
            "fleetlm_prompt_tokens", "prompt tokens of finished requests", registry=r
        )
        self.generation_tokens = Counter(
            "fleetlm_generation_tokens", "generated tokens of finished requests", registry=r
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
        self.e2e = Histogram(
            "fleetlm_e2e_request_latency_seconds",
            "time from request arrival to the last token",
            buckets=_E2E_BUCKETS,
            registry=r,
        )

    def observe_request(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        if status >= 400:
            self.errors.labels(code=str(status)).inc()

    def observe_tokens(self, prompt: int, generated: int) -> None:
        self.prompt_tokens.inc(prompt)
        self.generation_tokens.inc(generated)

    def render(self) -> bytes:
        return generate_latest(self.registry)
