"""Operational visibility: Prometheus metrics (:mod:`observability.metrics`)."""
