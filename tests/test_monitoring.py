"""The alerts, dashboards and metrics reference (envoy_lifecycle/monitoring): generated files
current, every query names real metrics, the real promtool checks and unit-tests every
alert, Prometheus' naming conventions hold, and the kustomize component renders."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from envoy_lifecycle.monitoring.__main__ import COMPONENT, DOCS, files, metrics_block, splice
from envoy_lifecycle.monitoring.alerts import ALERTS, promtool_tests, rules_file
from envoy_lifecycle.monitoring.catalog import ENVOY, names_in, ours, series_names
from envoy_lifecycle.monitoring.dashboards import DASHBOARDS, queries

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(120)


def test_generated_files_are_current() -> None:
    for path, content in files().items():
        assert (ROOT / path).read_text() == content, f"{path} is stale: run `make readme`"
    text = (ROOT / DOCS).read_text()
    assert splice(text, metrics_block()) == text, f"{DOCS} is stale: run `make readme`"


def test_every_query_names_metrics_that_exist() -> None:
    known = series_names()
    for expr in [*queries(), *(alert.expr for alert in ALERTS)]:
        named = names_in(expr)
        assert named, expr
        assert named <= known, (named - known, expr)


def test_every_alert_has_a_runbook_section() -> None:
    text = (ROOT / DOCS).read_text()
    for alert in ALERTS:
        assert f"\n### {alert.name}\n" in text, alert.name


def test_metric_names_and_labels_follow_prometheus_conventions() -> None:
    """Units in names, `_total` counters (the client adds it), bounded label values."""
    bounded = {"type", "store", "outcome", "phase", "verdict"}
    for metric in ours():
        assert metric.name.startswith(("xds_", "shutdown_manager_")), metric.name
        assert not metric.name.endswith("_total"), f"{metric.name}: the client adds _total"
        if metric.kind == "histogram":
            assert metric.name.endswith("_seconds"), metric.name
        if "timestamp" in metric.name or "deadline" in metric.name:
            assert metric.name.endswith("_seconds"), metric.name
        assert set(metric.labels) <= bounded, (metric.name, metric.labels)
        assert metric.help.endswith((".", ")")), metric.name
    for metric in ENVOY:
        assert metric.name.startswith("envoy_"), metric.name


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: `make setup` installs it")
def test_promtool_checks_the_rules_and_every_alert_fires_only_when_it_should(
    tmp_path: Path,
) -> None:
    assert PROMTOOL is not None
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rules_file(), sort_keys=False))
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump(promtool_tests(rules.name), sort_keys=False)
    )
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in checked.stdout
    tested = subprocess.run(
        [PROMTOOL, "test", "rules", "tests.yaml"], capture_output=True, text=True, cwd=tmp_path
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert len(promtool_tests(rules.name)["tests"]) == 2 * len(ALERTS)


def test_a_wrong_threshold_is_caught_by_the_unit_tests(tmp_path: Path) -> None:
    """The unit tests can fail: an alert that never fires breaks its firing case."""
    if PROMTOOL is None:
        pytest.skip("promtool missing: `make setup` installs it")
    broken = rules_file()
    broken["groups"][0]["rules"][0]["expr"] += " > 1000000"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(broken, sort_keys=False))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(promtool_tests("rules.yaml")))
    tested = subprocess.run(
        [PROMTOOL, "test", "rules", "tests.yaml"], capture_output=True, text=True, cwd=tmp_path
    )
    assert tested.returncode != 0
    assert ALERTS[0].name in tested.stdout + tested.stderr


def test_the_component_renders_with_an_overlay(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")  # kustomize wants relative paths
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {"resources": ["../deploy/envoy-daemonset"], "components": [f"../{COMPONENT}"]}
        )
    )
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    objects = [o for o in yaml.safe_load_all(rendered.stdout) if o]
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("PrometheusRule", "envoy-lifecycle") in kinds
    assert {("PodMonitor", "envoy"), ("PodMonitor", "xds-server")} <= kinds
    (dashboards,) = [o for o in objects if o["metadata"]["name"] == "envoy-lifecycle-dashboards"]
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert len(dashboards["data"]) == len(DASHBOARDS)
    for body in dashboards["data"].values():
        assert json.loads(body)["panels"]
    ports = {
        p["name"]
        for o in objects
        if o["kind"] == "DaemonSet"
        for c in o["spec"]["template"]["spec"]["containers"]
        + o["spec"]["template"]["spec"].get("initContainers", [])
        for p in c.get("ports", [])
    }
    monitored = {
        e["port"] for o in objects if o["kind"] == "PodMonitor" and o["metadata"]["name"] == "envoy"
        for e in o["spec"]["podMetricsEndpoints"]
    }  # fmt: skip
    assert monitored <= ports, "a PodMonitor names a port the Envoy pod does not have"


def test_the_chart_adds_each_monitoring_object_only_when_asked() -> None:
    from envoy_lifecycle.monitoring.__main__ import dashboards_configmap, pod_monitors
    from envoy_lifecycle.monitoring.alerts import prometheus_rule
    from tests.test_deploy import CHART, helm

    def render(*flags: str) -> list[dict[str, Any]]:
        done = subprocess.run(
            [helm(), "template", "envoy-lifecycle", str(CHART), *flags],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return [o for o in yaml.safe_load_all(done.stdout) if o]

    kinds = {"PodMonitor", "PrometheusRule"}
    assert not [o for o in render() if o["kind"] in kinds or "grafana_dashboard" in str(o)]
    on = render(
        *("--set", "monitoring.podMonitors=true", "--set", "monitoring.prometheusRule=true"),
        *("--set", "monitoring.dashboards=true"),
    )
    wanted = [*pod_monitors(), prometheus_rule(), dashboards_configmap()]
    for made in wanted:  # Helm's own {{ }} escaped: the alerts' templates arrive intact
        assert made in on, made["metadata"]["name"]
