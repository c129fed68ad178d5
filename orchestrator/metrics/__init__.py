"""Prometheus metrics: the ingress's own registry (ingress.py) and the controller's collector
(controller.py), which derives the fleet's metrics from the controller's state at each scrape.

Nothing here is imported by policies/ or the engine: prometheus stays on the orchestrator side.
docs/metrics.md lists every metric.
"""
