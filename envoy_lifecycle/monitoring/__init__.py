"""What an operator looks at: the metrics catalogue, the alerts and the Grafana dashboards,
all from this one source (`python -m envoy_lifecycle.monitoring` writes deploy/monitoring
and the metrics reference in docs/operations.md; a test fails when they drift)."""
