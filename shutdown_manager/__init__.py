"""Graceful shutdown of Envoy in Kubernetes pods: a sidecar, a preStop hook and one drain engine."""

__version__ = "0.1.0"
