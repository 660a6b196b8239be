"""The Grafana dashboards, as data: every query names metrics the catalogue knows (a test
checks it, and a real Prometheus answers each one in tests/e2e/test_prometheus.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[tuple[str, str], ...]
    """(PromQL, legend)."""
    unit: str = "short"
    description: str = ""


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]


DRAIN = Dashboard(
    "envoy-lifecycle-drain",
    "envoy-lifecycle / drains",
    "Envoy pods being drained by the shutdown-manager sidecar: look here during a rollout.",
    (
        Panel(
            "Drains in flight",
            (('sum(shutdown_manager_drain_phase{phase="draining"})', "draining pods"),),
            description="Pods whose sidecar is draining Envoy now.",
        ),
        Panel(
            "Drain outcomes (last hour)",
            (("sum by (outcome) (increase(shutdown_manager_drains_total[1h]))", "{{outcome}}"),),
            description="drained and quiescent are clean; timed_out, envoy_gone, failed cut"
            " connections.",
        ),
        Panel(
            "Drain duration p50 / p99",
            (
                (
                    "histogram_quantile(0.5, sum by (le)"
                    " (rate(shutdown_manager_drain_duration_seconds_bucket[15m])))",
                    "p50",
                ),
                (
                    "histogram_quantile(0.99, sum by (le)"
                    " (rate(shutdown_manager_drain_duration_seconds_bucket[15m])))",
                    "p99",
                ),
                ("max(shutdown_manager_drain_deadline_seconds)", "deadline"),
            ),
            unit="s",
            description="From trigger to release, against the deadline the drains run with.",
        ),
        Panel(
            "Time into the drain, per pod",
            (
                (
                    "(time() - shutdown_manager_drain_started_timestamp_seconds)"
                    ' * on(namespace, pod) shutdown_manager_drain_phase{phase="draining"}',
                    "{{namespace}}/{{pod}}",
                ),
            ),
            unit="s",
            description="How long each draining pod has been at it (0 when not draining).",
        ),
        Panel(
            "Envoy connections during the drain",
            (("sum by (pod) (shutdown_manager_envoy_active_connections)", "{{pod}}"),),
            description="What the sidecar waits for: the drain releases at or below its threshold.",
        ),
        Panel(
            "Envoy health-check state",
            (("sum by (pod) (envoy_server_state)", "{{pod}}"),),
            description="1: failing its health check (draining); 0: live.",
        ),
    ),
)

CONTROL_PLANE = Dashboard(
    "envoy-lifecycle-xds",
    "envoy-lifecycle / control plane",
    "xds-server: what it read, what it published, and whether every Envoy has it.",
    (
        Panel(
            "Envoys connected / behind",
            (
                ("sum(xds_connected_proxies)", "connected"),
                ("sum(xds_proxies_behind)", "not ACKed the latest"),
            ),
        ),
        Panel(
            "Snapshots published, failed",
            (
                ("sum(rate(xds_snapshots_total[5m]))", "published/s"),
                ("sum(rate(xds_publish_failures_total[5m]))", "failed/s"),
            ),
            unit="ops",
        ),
        Panel(
            "Change -> every Envoy ACKed, p50 / p99",
            (
                (
                    "histogram_quantile(0.5, sum by (le)"
                    " (rate(xds_convergence_seconds_bucket[10m])))",
                    "p50",
                ),
                (
                    "histogram_quantile(0.99, sum by (le)"
                    " (rate(xds_convergence_seconds_bucket[10m])))",
                    "p99",
                ),
            ),
            unit="s",
        ),
        Panel(
            "Endpoint programming p99 (pod change -> every Envoy)",
            (
                (
                    "histogram_quantile(0.99, sum by (le)"
                    " (rate(xds_endpoint_programming_seconds_bucket[10m])))",
                    "p99",
                ),
                ("sum(xds_endpoint_fallback_clusters)", "Services on terminating pods"),
            ),
            unit="s",
        ),
        Panel(
            "Rejected objects, NACKs",
            (
                ("max(xds_rejected_objects_current)", "rejected now"),
                ("sum by (type) (increase(xds_nacks_total[10m]))", "NACKs {{type}}"),
            ),
        ),
        Panel(
            "Pushes by type",
            (("sum by (type) (rate(xds_pushes_total[5m]))", "{{type}}"),),
            unit="ops",
        ),
        Panel(
            "Certificate life left",
            (
                (
                    "min by (store) (xds_certificate_expiry_timestamp_seconds - time())",
                    "{{store}}",
                ),
            ),
            unit="s",
        ),
        Panel(
            "Leader, certificate problems",
            (
                ("sum(xds_leader)", "leaders"),
                ("sum by (store) (xds_certificate_problem)", "problem {{store}}"),
            ),
        ),
    ),
)

ENVOY = Dashboard(
    "envoy-lifecycle-envoy",
    "envoy-lifecycle / Envoy",
    "The Envoys themselves, from their own stats: traffic, backends, retries.",
    (
        Panel(
            "Client connections",
            (
                (
                    "sum by (envoy_http_conn_manager_prefix) (envoy_http_downstream_cx_active)",
                    "{{envoy_http_conn_manager_prefix}}",
                ),
            ),
        ),
        Panel(
            "Responses by class",
            (
                (
                    "sum by (envoy_response_code_class) (rate(envoy_http_downstream_rq_xx[5m]))",
                    "{{envoy_response_code_class}}xx",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "Backend hosts: taking requests / all",
            (
                ("sum(envoy_cluster_membership_healthy)", "taking requests"),
                ("sum(envoy_cluster_membership_total)", "all (DRAINING included)"),
            ),
        ),
        Panel(
            "Retries, retries refused by the budget",
            (
                ("sum(rate(envoy_cluster_upstream_rq_retry[5m]))", "retries/s"),
                ("sum(rate(envoy_cluster_upstream_rq_retry_overflow[5m]))", "refused/s"),
            ),
            unit="reqps",
        ),
        Panel(
            "Connected to xds-server",
            (("sum(envoy_control_plane_connected_state)", "Envoys connected"),),
        ),
    ),
)

DASHBOARDS = (DRAIN, CONTROL_PLANE, ENVOY)


def queries() -> list[str]:
    return [q for d in DASHBOARDS for p in d.panels for q, _ in p.queries]


def grafana(dashboard: Dashboard) -> dict[str, Any]:
    """Grafana's dashboard JSON model, two panels a row, a Prometheus data source picked
    when it is imported (`${datasource}`)."""
    source = {"type": "prometheus", "uid": "${datasource}"}
    panels = []
    for number, panel in enumerate(dashboard.panels):
        panels.append(
            {
                "id": number + 1,
                "type": "timeseries",
                "title": panel.title,
                "description": panel.description,
                "datasource": source,
                "gridPos": {"x": (number % 2) * 12, "y": (number // 2) * 8, "w": 12, "h": 8},
                "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                "targets": [
                    {
                        "refId": chr(ord("A") + i),
                        "expr": q,
                        "legendFormat": legend,
                        "datasource": source,
                    }
                    for i, (q, legend) in enumerate(panel.queries)
                ],
            }
        )
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": ["envoy-lifecycle"],
        "schemaVersion": 39,
        "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "10s",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                }
            ]
        },
        "panels": panels,
    }
