"""Prometheus metrics of the control plane, in its own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONVERGENCE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class XdsMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.proxies = Gauge(
            "xds_connected_proxies", "ADS streams open now.", registry=self.registry
        )
        self.pushes = Counter(
            "xds_pushes", "Responses sent, by resource type.", ["type"], registry=self.registry
        )
        self.resources = Counter(
            "xds_resources_sent",
            "Resources sent (or removed), by type: what a change really cost.",
            ["type"],
            registry=self.registry,
        )
        self.nacks = Counter(
            "xds_nacks", "Responses rejected by a proxy.", ["node", "type"], registry=self.registry
        )
        self.snapshots = Counter(
            "xds_snapshots",
            "Snapshots published (a real change of the input).",
            registry=self.registry,
        )
        self.rejected = Counter(
            "xds_rejected_objects", "Input objects or files rejected.", registry=self.registry
        )
        self.convergence = Histogram(
            "xds_convergence_seconds",
            "From a change seen in the input to every connected proxy having ACKed it.",
            buckets=CONVERGENCE_BUCKETS,
            registry=self.registry,
        )
        self.ready = Gauge(
            "xds_ready", "1 once the first snapshot is built.", registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
