"""The alerts, each with what it tells an operator, its runbook section in
docs/operations.md, and the two series that prove it: one that must fire it and a healthy
one that must not (run by `promtool test rules`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

RUNBOOK = "docs/operations.md"
"""Where the runbooks are, in this repository (its published docs, wherever they live)."""
POD = 'namespace="shop", pod="envoy-7d9f-x2"'
"""The labels a scrape of a pod's target carries (the PodMonitors set them)."""


@dataclass(frozen=True)
class Case:
    """Input series (`name{labels}`, promtool's `values` notation, one sample a minute) and
    the minute the rule is evaluated at."""

    series: tuple[tuple[str, str], ...]
    at_minutes: int


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    summary: str
    """What happened and where, with `{{ $labels.x }}` placeholders."""
    runbook: str
    """The runbook's section, in docs/operations.md."""
    fires: Case
    fired_labels: dict[str, str]
    """The labels of the alert the firing case raises (the alert's own ones added)."""
    healthy: Case
    for_minutes: int = 0
    severity: str = "warning"
    labels: dict[str, str] = field(default_factory=dict)

    def rule(self) -> dict[str, Any]:
        rule: dict[str, Any] = {"alert": self.name, "expr": self.expr}
        if self.for_minutes:
            rule["for"] = f"{self.for_minutes}m"
        rule["labels"] = {"severity": self.severity, **self.labels}
        rule["annotations"] = {
            "summary": self.summary,
            "runbook_url": f"{RUNBOOK}#{anchor(self.name)}",
        }
        return rule

    def tests(self) -> list[dict[str, Any]]:
        """promtool unit tests: the firing case raises exactly this alert, the healthy none."""
        expected = {**self.fired_labels, "severity": self.severity, **self.labels}
        annotations = {
            "summary": render(self.summary, expected),
            "runbook_url": f"{RUNBOOK}#{anchor(self.name)}",
        }
        fired = {"exp_labels": expected, "exp_annotations": annotations}
        return [
            _test(self.name, self.fires, [fired]),
            _test(self.name, self.healthy, []),
        ]


def _test(name: str, case: Case, alerts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in case.series],
        "alert_rule_test": [
            {"eval_time": f"{case.at_minutes}m", "alertname": name, "exp_alerts": alerts}
        ],
    }


def anchor(name: str) -> str:
    return name.lower()


def render(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m[1], ""), template)


SIDE = {"namespace": "shop", "pod": "envoy-7d9f-x2"}

ALERTS = [
    Alert(
        "EnvoyDrainEndedByDeadline",
        'increase(shutdown_manager_drains_total{outcome=~"timed_out|envoy_gone|failed"}[15m]) > 0',
        "Envoy pod {{ $labels.namespace }}/{{ $labels.pod }}: a drain ended {{ $labels.outcome }},"
        " not drained: connections were cut",
        "A drain ended by its deadline, or with Envoy gone.",
        Case(
            (
                (f'shutdown_manager_drains_total{{outcome="timed_out", {POD}}}', "0 0 1 1 1"),
                (f'shutdown_manager_drains_total{{outcome="drained", {POD}}}', "0 0 0 0 0"),
            ),
            3,
        ),
        {**SIDE, "outcome": "timed_out"},
        Case(
            (
                (f'shutdown_manager_drains_total{{outcome="drained", {POD}}}', "0 0 1 1 1"),
                (f'shutdown_manager_drains_total{{outcome="timed_out", {POD}}}', "0 0 0 0 0"),
            ),
            3,
        ),
    ),
    Alert(
        "EnvoyDrainOverdue",
        "(time() - shutdown_manager_drain_started_timestamp_seconds"
        " > shutdown_manager_drain_deadline_seconds + 60)"
        ' and on(namespace, pod) (shutdown_manager_drain_phase{phase="draining"} == 1)',
        "Envoy pod {{ $labels.namespace }}/{{ $labels.pod }} has been draining a minute past"
        " its deadline",
        "A pod whose drain runs past its deadline.",
        Case(
            (
                (f"shutdown_manager_drain_started_timestamp_seconds{{{POD}}}", "60x10"),
                (f"shutdown_manager_drain_deadline_seconds{{{POD}}}", "120x10"),
                (f'shutdown_manager_drain_phase{{phase="draining", {POD}}}', "1x10"),
            ),
            5,
        ),
        SIDE,
        Case(
            (
                (f"shutdown_manager_drain_started_timestamp_seconds{{{POD}}}", "60x10"),
                (f"shutdown_manager_drain_deadline_seconds{{{POD}}}", "120x10"),
                (f'shutdown_manager_drain_phase{{phase="draining", {POD}}}', "1 1 1 0 0 0"),
            ),
            5,
        ),
    ),
    Alert(
        "EnvoyLeftDraining",
        "(envoy_server_state == 1)"
        ' unless on(namespace, pod) (shutdown_manager_drain_phase{phase="draining"} == 1)',
        "Envoy pod {{ $labels.namespace }}/{{ $labels.pod }} fails its health check and no"
        " drain is running: it takes no traffic",
        "Envoy left DRAINING outside a deletion.",
        Case(
            (
                (f"envoy_server_state{{{POD}}}", "1x20"),
                (f'shutdown_manager_drain_phase{{phase="draining", {POD}}}', "0x20"),
            ),
            15,
        ),
        SIDE,
        Case(
            (
                (f"envoy_server_state{{{POD}}}", "1x20"),
                (f'shutdown_manager_drain_phase{{phase="draining", {POD}}}', "1x20"),
            ),
            15,
        ),
        for_minutes=10,
    ),
    Alert(
        "XdsNacks",
        "sum by (namespace, pod, type) (increase(xds_nacks_total[10m])) > 0",
        "xds-server {{ $labels.namespace }}/{{ $labels.pod }}: Envoys rejected {{ $labels.type }}"
        " responses",
        "Envoys rejected what the control plane sent.",
        Case(((f'xds_nacks_total{{type="Cluster", {POD}}}', "0 0 2 2 2"),), 3),
        {**SIDE, "type": "Cluster"},
        Case(((f'xds_nacks_total{{type="Cluster", {POD}}}', "0x5"),), 3),
    ),
    Alert(
        "XdsRejectedObjects",
        "xds_rejected_objects_current > 0",
        "xds-server {{ $labels.namespace }}/{{ $labels.pod }}: some input objects are rejected"
        " (listed at /status)",
        "Objects rejected.",
        Case(((f"xds_rejected_objects_current{{{POD}}}", "2x30"),), 20),
        SIDE,
        Case(((f"xds_rejected_objects_current{{{POD}}}", "2 2 0x30"),), 20),
        for_minutes=15,
        severity="info",
    ),
    Alert(
        "XdsProxiesBehind",
        "xds_proxies_behind > 0",
        "xds-server {{ $labels.namespace }}/{{ $labels.pod }}: connected Envoys have not ACKed"
        " the config served for 5 minutes",
        "Proxies connected but not ACKing.",
        Case(((f"xds_proxies_behind{{{POD}}}", "1x10"),), 8),
        SIDE,
        Case(((f"xds_proxies_behind{{{POD}}}", "1 1 0 1 0 1 0 1 0 1"),), 8),
        for_minutes=5,
    ),
    Alert(
        "XdsCertificateLifeRunningOut",
        "(xds_certificate_expiry_timestamp_seconds - time())"
        " < (xds_certificate_expiry_timestamp_seconds"
        " - xds_certificate_issued_timestamp_seconds) / 3",
        "xds-server {{ $labels.namespace }}/{{ $labels.pod }}: the {{ $labels.store }}"
        " certificate has less than a third of its life left",
        "A certificate with a third of its life left, or rotation failing.",
        Case(
            (
                (f'xds_certificate_expiry_timestamp_seconds{{store="envoy", {POD}}}', "3600x60"),
                (f'xds_certificate_issued_timestamp_seconds{{store="envoy", {POD}}}', "0x60"),
            ),
            55,
        ),
        {**SIDE, "store": "envoy"},
        Case(
            (
                (f'xds_certificate_expiry_timestamp_seconds{{store="envoy", {POD}}}', "36000x60"),
                (f'xds_certificate_issued_timestamp_seconds{{store="envoy", {POD}}}', "0x60"),
            ),
            55,
        ),
        for_minutes=10,
        severity="critical",
    ),
    Alert(
        "XdsCertificateProblem",
        "xds_certificate_problem == 1",
        "xds-server {{ $labels.namespace }}/{{ $labels.pod }}: the {{ $labels.store }}"
        " certificate is overdue for renewal or invalid (the server's log says why)",
        "A certificate with a third of its life left, or rotation failing.",
        Case(((f'xds_certificate_problem{{store="server", {POD}}}', "1x40"),), 35),
        {**SIDE, "store": "server"},
        Case(((f'xds_certificate_problem{{store="server", {POD}}}', "1 1 1 0x40"),), 35),
        for_minutes=30,
    ),
    Alert(
        "XdsNoLeader",
        "sum by (namespace) (xds_leader) == 0",
        "xds-server in {{ $labels.namespace }}: no replica holds the leader Lease (statuses and"
        " certificate Secrets are not written)",
        "The leader Lease lost or flapping.",
        Case(((f"xds_leader{{{POD}}}", "0x10"),), 8),
        {"namespace": "shop"},
        Case(((f"xds_leader{{{POD}}}", "1x10"),), 8),
        for_minutes=5,
    ),
    Alert(
        "XdsLeaderFlapping",
        "sum by (namespace) (changes(xds_leader[30m])) > 6",
        "xds-server in {{ $labels.namespace }}: the leader Lease changed hands more than 6"
        " times in 30 minutes",
        "The leader Lease lost or flapping.",
        Case(((f"xds_leader{{{POD}}}", "0 1 0 1 0 1 0 1 0 1 0 1"),), 11),
        {"namespace": "shop"},
        Case(((f"xds_leader{{{POD}}}", "0 1 1 1 1 1 1 1 1 1 1 1"),), 11),
    ),
    Alert(
        "XdsEndpointProgrammingSlow",
        "histogram_quantile(0.99, sum by (namespace, le)"
        " (rate(xds_endpoint_programming_seconds_bucket[10m]))) > 2",
        "xds-server in {{ $labels.namespace }}: terminating pods keep getting requests for more"
        " than 2 s (endpoint programming p99)",
        "Endpoint programming slow.",
        Case(
            (
                (f'xds_endpoint_programming_seconds_bucket{{le="1", {POD}}}', "0+0x20"),
                (f'xds_endpoint_programming_seconds_bucket{{le="2.5", {POD}}}', "0+0x20"),
                (f'xds_endpoint_programming_seconds_bucket{{le="5", {POD}}}', "0+10x20"),
                (f'xds_endpoint_programming_seconds_bucket{{le="+Inf", {POD}}}', "0+10x20"),
            ),
            15,
        ),
        {"namespace": "shop"},
        Case(
            (
                (f'xds_endpoint_programming_seconds_bucket{{le="1", {POD}}}', "0+10x20"),
                (f'xds_endpoint_programming_seconds_bucket{{le="2.5", {POD}}}', "0+10x20"),
                (f'xds_endpoint_programming_seconds_bucket{{le="5", {POD}}}', "0+10x20"),
                (f'xds_endpoint_programming_seconds_bucket{{le="+Inf", {POD}}}', "0+10x20"),
            ),
            15,
        ),
        for_minutes=5,
    ),
]


GROUP = "envoy-lifecycle"


def rules_file() -> dict[str, Any]:
    """A plain Prometheus rules file."""
    return {"groups": [{"name": GROUP, "rules": [alert.rule() for alert in ALERTS]}]}


def prometheus_rule(namespace: str = "envoy-lifecycle") -> dict[str, Any]:
    """The same as a PrometheusRule, for the Prometheus operator."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "envoy-lifecycle",
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "envoy-lifecycle"},
        },
        "spec": rules_file(),
    }


def promtool_tests(rules_path: str) -> dict[str, Any]:
    return {
        "rule_files": [rules_path],
        "evaluation_interval": "1m",
        "tests": [test for alert in ALERTS for test in alert.tests()],
    }
