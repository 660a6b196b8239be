"""Every metric an alert or a panel may name: ours, read from the registries themselves,
and the Envoy stats we rely on (Envoy's own `/stats/prometheus` names)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "info": ("_info",),
}


@dataclass(frozen=True)
class Metric:
    name: str
    """As exposed, without the per-type suffix (`xds_pushes` of `xds_pushes_total`)."""
    kind: str
    labels: tuple[str, ...]
    help: str
    source: str  # the command that exposes it

    @property
    def series_names(self) -> tuple[str, ...]:
        return tuple(self.name + suffix for suffix in SUFFIXES[self.kind])

    @property
    def exposed(self) -> str:
        return self.series_names[0] if self.kind != "histogram" else self.name


def _from(instance: Any, source: str) -> list[Metric]:
    found = []
    for value in vars(instance).values():
        name, kind = getattr(value, "_name", None), getattr(value, "_type", None)
        if isinstance(name, str) and isinstance(kind, str):
            labels = tuple(getattr(value, "_labelnames", ()))
            found.append(Metric(name, kind, labels, str(value._documentation), source))
    return found


def ours() -> list[Metric]:
    from shutdown_manager.metrics import DrainMetrics
    from xds_server.metrics import XdsMetrics

    sidecar = _from(DrainMetrics(), "shutdown-manager serve (and envoy-gateway's drop-in)")
    return [*sidecar, *_from(XdsMetrics(), "xds-server serve")]


CLUSTER = ("envoy_cluster_name",)
LISTENER = ("envoy_http_conn_manager_prefix",)


def _envoy(name: str, kind: str, labels: tuple[str, ...], what: str) -> Metric:
    return Metric(name, kind, labels, what, "Envoy")


ENVOY = [
    _envoy("envoy_server_state", "gauge", (), "0 live, 1 draining (health check failed)."),
    _envoy("envoy_http_downstream_cx_active", "gauge", LISTENER, "Open client connections."),
    _envoy(
        "envoy_http_downstream_rq_xx",
        "counter-raw",
        (*LISTENER, "envoy_response_code_class"),
        "Responses to clients by class.",
    ),
    _envoy(
        "envoy_cluster_upstream_rq_retry",
        "counter-raw",
        CLUSTER,
        "Requests retried (Envoy does not count them by trigger).",
    ),
    _envoy(
        "envoy_cluster_upstream_rq_retry_overflow",
        "counter-raw",
        CLUSTER,
        "Retries refused by the retry budget.",
    ),
    _envoy("envoy_cluster_membership_healthy", "gauge", CLUSTER, "Hosts taking new requests."),
    _envoy("envoy_cluster_membership_total", "gauge", CLUSTER, "Hosts, DRAINING ones included."),
    _envoy("envoy_control_plane_connected_state", "gauge", (), "1 while the ADS stream is up."),
]
"""The Envoy stats the alerts and dashboards read. Envoy exposes its counters without a
`_total` suffix, so they keep their names here (`counter-raw`)."""
SUFFIXES["counter-raw"] = ("",)


def every() -> list[Metric]:
    return [*ours(), *ENVOY]


def series_names() -> set[str]:
    return {name for metric in every() for name in metric.series_names}


_NAME = re.compile(r"\b((?:shutdown_manager|xds|envoy)_[a-z0-9_]+)\b")


def names_in(expr: str) -> set[str]:
    """The metric names an expression reads (ours and Envoy's, by their prefixes; label
    names such as `envoy_cluster_name` are not metrics)."""
    labels = {label for metric in every() for label in metric.labels}
    unquoted = re.sub(r'"[^"]*"', '""', expr)  # label values are not names either
    return set(_NAME.findall(unquoted)) - labels
