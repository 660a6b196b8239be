"""Prometheus metrics of the control plane, in its own registry."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from xds_server.xds.order import PUSH_ORDER

CONVERGENCE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class XdsMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._push_children: dict[str, tuple[Counter, Counter]] = {}
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
        # By type only: node ids are chosen by clients, so one label value per node would let
        # any client grow /metrics without bound (the node is in the NACK's log line).
        self.nacks = Counter(
            "xds_nacks", "Responses rejected by a proxy.", ["type"], registry=self.registry
        )
        self.snapshots = Counter(
            "xds_snapshots",
            "Snapshots published (a real change of the input).",
            registry=self.registry,
        )
        self.rejected = Counter(
            "xds_rejected_objects",
            "Rejections of input objects or files, each counted once when it appears.",
            registry=self.registry,
        )
        self.rejected_now = Gauge(
            "xds_rejected_objects_current",
            "Input objects or files rejected as of the last change (listed at /status).",
            registry=self.registry,
        )
        self.source_problem = Gauge(
            "xds_source_problem",
            "1 while the input cannot be read (the last good config is served meanwhile).",
            registry=self.registry,
        )
        self.source_restarts = Counter(
            "xds_source_restarts",
            "Times the input source stopped and was started again (a bug or an input nobody"
            " foresaw: the log says which).",
            registry=self.registry,
        )
        self.publish_failures = Counter(
            "xds_publish_failures",
            "Changes whose snapshot could not be built (the last good one stays).",
            registry=self.registry,
        )
        self.convergence = Histogram(
            "xds_convergence_seconds",
            "From a change seen in the input to every connected proxy having ACKed it.",
            buckets=CONVERGENCE_BUCKETS,
            registry=self.registry,
        )
        self.endpoint_programming = Histogram(
            "xds_endpoint_programming_seconds",
            "From the pod change behind an EndpointSlice update (its"
            " endpoints.kubernetes.io/last-change-trigger-time) to every connected proxy having"
            " ACKed the endpoints it caused: how long a terminating pod may still get requests.",
            buckets=CONVERGENCE_BUCKETS,
            registry=self.registry,
        )
        self.fallback_activations = Counter(
            "xds_endpoint_fallback_activations",
            "Times a Service port ran out of ready endpoints and its terminating, still serving"
            " ones took requests (KEP-1669's fallback).",
            registry=self.registry,
        )
        self.in_fallback = Gauge(
            "xds_endpoint_fallback_clusters",
            "Service ports served by terminating endpoints now (no ready one left).",
            registry=self.registry,
        )
        for type_url in PUSH_ORDER:  # every type from the start: a panel shows 0, not nothing
            kind = type_url.rsplit(".", 1)[-1]
            for counter in (self.pushes, self.resources, self.nacks):
                counter.labels(kind)
        self.ready = Gauge(
            "xds_ready", "1 once the first snapshot is built.", registry=self.registry
        )

        self.cert_expiry = Gauge(
            "xds_certificate_expiry_timestamp_seconds",
            "When each stored certificate expires (alert on time() > this, or close to it).",
            ["store"],
            registry=self.registry,
        )
        self.cert_issued = Gauge(
            "xds_certificate_issued_timestamp_seconds",
            "When each stored certificate became valid (notBefore): with the expiry, its life.",
            ["store"],
            registry=self.registry,
        )
        self.streams_dropped = Counter(
            "xds_streams_dropped",
            "ADS streams dropped because the proxy left a response unanswered too long.",
            registry=self.registry,
        )
        self.proxies_behind = Gauge(
            "xds_proxies_behind",
            "Connected proxies that have not ACKed the snapshot served now (as of the scrape).",
            registry=self.registry,
        )
        self.cert_problem = Gauge(
            "xds_certificate_problem",
            "1 when a store holds a certificate that is invalid, expired or overdue.",
            ["store"],
            registry=self.registry,
        )
        self.cert_rotations = Counter(
            "xds_certificate_rotations",
            "Certificates this process issued, by store (ca, server, envoy).",
            ["store"],
            registry=self.registry,
        )
        self.cert_reloads = Counter(
            "xds_certificate_reloads",
            "Server pairs loaded for new handshakes without a restart.",
            registry=self.registry,
        )
        self.cert_rejected = Counter(
            "xds_certificate_rejected",
            "Server pairs found in the store and refused (the last good one stayed).",
            registry=self.registry,
        )
        self.cert_serial = Info(
            "xds_certificate",
            "Serial of the server certificate new handshakes get.",
            registry=self.registry,
        )
        self.clients_refused = Counter(
            "xds_clients_refused",
            "Streams refused because the client certificate lacks the Envoy identity.",
            registry=self.registry,
        )

        self.leader = Gauge(
            "xds_leader", "1 while this replica holds the leader Lease.", registry=self.registry
        )
        self.status_writes = Counter(
            "xds_ingress_status_writes",
            "Ingress statuses written (by the leader, only when they differed).",
            registry=self.registry,
        )

    def count_push(self, kind: str, resources: int) -> None:
        """One response of `kind` with `resources` in it: the label lookups done once per
        kind, not once per response (a thousand streams push at every change)."""
        children = self._push_children.get(kind)
        if children is None:
            children = self._push_children[kind] = (
                self.pushes.labels(kind),
                self.resources.labels(kind),
            )
        children[0].inc()
        if resources:
            children[1].inc(resources)

    def render(self) -> bytes:
        return generate_latest(self.registry)
