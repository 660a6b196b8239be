"""deploy/helm/envoy-lifecycle: the Helm chart, generated from the kustomize overlays so the
two cannot drift. `make readme` (or `python -m bench.lab.helm_chart`) writes it again;
tests/test_deploy.py checks it is current and that, at its defaults, each Envoy variant
renders exactly the objects of its overlay.

How: the four Envoy variants (DaemonSet or Deployment, sidecar native or classic) are built
with `kubectl kustomize`; objects the same in all four go to templates/common.yaml (the network
policies to templates/network-policies.yaml), the others to templates/envoy.yaml, one block
per variant. Then the values the chart exposes are cut out of the rendered objects and put
back as template expressions: the drain policy (and the grace period derived from it), the
images, the replicas, the certificate rotation, the ingress class, the resources. values.yaml
is written from what was cut out, so its defaults are the overlays' values.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from envoy_lifecycle.monitoring.__main__ import NAMESPACE, dashboards_configmap, pod_monitors
from envoy_lifecycle.monitoring.alerts import prometheus_rule

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "envoy-lifecycle"
HEADER = "# Generated from the kustomize overlays by `make readme` (bench/lab/helm_chart.py).\n"
VARIANTS = {
    ("DaemonSet", "native"): ["envoy-daemonset"],
    ("DaemonSet", "classic"): ["envoy-daemonset-classic"],
    ("Deployment", "native"): ["envoy-deployment"],
    ("Deployment", "classic"): ["envoy-deployment", "components/classic-sidecar"],
}
"""Each variant's overlay, and a component applied on top (no overlay has that one)."""

Key = tuple[str, str]
Cut = Callable[[int], str]
"""A template fragment for a cut-out value, given the indent of the line it sits on."""


def kustomize(overlay: str, component: str | None = None) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as name:
        where = Path(name)
        text = f"resources: [{_relative(DEPLOY / overlay, where)}]\n"
        if component is not None:
            text += f"components: [{_relative(DEPLOY / component, where)}]\n"
        (where / "kustomization.yaml").write_text(text)
        done = subprocess.run(["kubectl", "kustomize", str(where)], capture_output=True,
                              text=True, timeout=60, check=True)  # fmt: skip
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _relative(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def key(obj: dict[str, Any]) -> Key:
    return obj["kind"], obj["metadata"]["name"]


class Cutter:
    """Replaces values in objects with placeholders, and placeholders with templates."""

    def __init__(self) -> None:
        self.cuts: dict[str, Cut] = {}
        self.values: dict[str, Any] = {}

    def cut(self, fragment: Cut) -> str:
        token = f"__cut{len(self.cuts)}__"
        self.cuts[token] = fragment
        return token

    def scalar(self, expression: str) -> str:
        return self.cut(lambda _: "{{ " + expression + " }}")

    def block(self, expression: str) -> str:
        """A mapping (resources) from values, at the placeholder's place."""
        return self.cut(lambda indent: "{{- toYaml " + expression + f" | nindent {indent + 2} }}}}")

    def paste(self, text: str) -> str:
        def line(match: re.Match[str]) -> str:
            indent, head, token = match[1], match[2], match[3]
            fragment = self.cuts[token](len(indent))
            if fragment.startswith(("{{- if", "{{- with")):  # list items of their own
                return f"{indent}{fragment}"
            return f"{indent}{head}{fragment}"

        text = re.sub(r"^( *)(.*?)(__cut\d+__)", line, text, flags=re.M)
        for token, fragment in self.cuts.items():  # inside longer scalars
            text = text.replace(token, fragment(0))
        return text


def parametrize(obj: dict[str, Any], cutter: Cutter) -> None:
    """Cut the chart's values out of one object (in place)."""
    kind, name = key(obj)
    values = cutter.values
    if kind in ("DaemonSet", "Deployment") and name == "envoy":
        _envoy(obj["spec"]["template"]["spec"], cutter)
    if (kind, name) == ("Deployment", "xds-server"):
        values.setdefault("xdsServer", {})["replicas"] = obj["spec"]["replicas"]
        obj["spec"]["replicas"] = cutter.scalar(".Values.xdsServer.replicas | int")
        server = obj["spec"]["template"]["spec"]["containers"][0]
        values["xdsServer"]["resources"] = server["resources"]
        server["resources"] = cutter.block(".Values.xdsServer.resources")
        server["args"] = [_xds_arg(a, cutter) for a in server["args"]]
        server["args"].append(cutter.cut(_ingress_class))
        values["xdsServer"]["ingressClass"] = ""
    for spec in _pod_specs(obj):
        for item in spec.get("initContainers", []) + spec["containers"]:
            item["image"] = _image(item["image"], cutter)


def _pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {})
    if "jobTemplate" in spec:
        spec = spec["jobTemplate"]["spec"]
    return [spec["template"]["spec"]] if "template" in spec else []


def _image(image: str, cutter: Cutter) -> str:
    which = "envoy" if "envoyproxy/envoy" in image else "project"
    cutter.values.setdefault("images", {})[which] = image
    return cutter.scalar(f".Values.images.{which}")


def _xds_arg(arg: str, cutter: Cutter) -> str:
    values = cutter.values.setdefault("certificates", {})
    if arg == "--rotate":
        values["rotate"] = True
        return cutter.cut(lambda indent: "{{- if .Values.certificates.rotate }}\n"
                          f"{' ' * indent}- --rotate\n{' ' * indent}- --propagation-delay="
                          "{{ .Values.certificates.propagationDelaySeconds | int }}s\n"
                          f"{' ' * indent}{{{{- end }}}}")  # fmt: skip
    if arg.startswith("--propagation-delay="):
        values["propagationDelaySeconds"] = int(arg.split("=")[1].rstrip("s"))
        return "__drop__"
    return arg


def _ingress_class(indent: int) -> str:
    pad = " " * indent
    return ("{{- with .Values.xdsServer.ingressClass }}\n"
            f"{pad}- --ingress-class={{{{ . }}}}\n{pad}{{{{- end }}}}")  # fmt: skip


def _envoy(spec: dict[str, Any], cutter: Cutter) -> None:
    drain = cutter.values.setdefault("drain", {})
    every = spec.get("initContainers", []) + spec["containers"]
    sidecar = next(c for c in every if c["name"] == "shutdown-manager")
    envoy = next(c for c in spec["containers"] if c["name"] == "envoy")
    for argv in (sidecar["args"], sidecar["lifecycle"]["preStop"]["exec"]["command"]):
        for i, arg in enumerate(argv):
            for flag, field in (("--drain-timeout=", "timeoutSeconds"),
                                ("--min-drain-duration=", "minDurationSeconds")):  # fmt: skip
                if arg.startswith(flag):
                    drain[field] = int(arg[len(flag) :].rstrip("s"))
                    argv[i] = flag + cutter.scalar(f".Values.drain.{field} | int") + "s"
    at = envoy["args"].index("--drain-time-s") + 1
    assert int(envoy["args"][at]) == drain["timeoutSeconds"], "Envoy's drain time is the drain's"
    envoy["args"][at] = cutter.scalar(".Values.drain.timeoutSeconds | int | quote")
    drain["graceMarginSeconds"] = spec["terminationGracePeriodSeconds"] - drain["timeoutSeconds"]
    spec["terminationGracePeriodSeconds"] = cutter.scalar(
        "add (int .Values.drain.timeoutSeconds) (int .Values.drain.graceMarginSeconds)"
    )
    for item, name in ((envoy, "envoy"), (sidecar, "shutdownManager")):
        cutter.values.setdefault(name, {})["resources"] = item["resources"]
        item["resources"] = cutter.block(f".Values.{name}.resources")


def dump(objects: list[dict[str, Any]], cutter: Cutter) -> str:
    text = "---\n".join(yaml.safe_dump(o, sort_keys=False, width=1000) for o in objects)
    text = re.sub(r"^ *- __drop__\n", "", text, flags=re.M)
    return cutter.paste(text)


def render() -> dict[str, str]:
    """The chart's files: path (relative to the chart) -> content."""
    built = {variant: kustomize(*paths) for variant, paths in VARIANTS.items()}
    first = next(iter(built.values()))
    common_keys = [key(o) for o in first
                   if all(o in objects for objects in built.values())]  # fmt: skip
    cutter = Cutter()
    common = [o for o in first if key(o) in common_keys and o["kind"] != "NetworkPolicy"]
    policies = [o for o in first if key(o) in common_keys and o["kind"] == "NetworkPolicy"]
    files = {}
    for o in [*common, *policies]:
        parametrize(o, cutter)
    files["templates/common.yaml"] = HEADER + CROSS_CHECKS + dump(common, cutter)
    files["templates/network-policies.yaml"] = (
        HEADER + "{{- if .Values.networkPolicies.enabled }}\n" + dump(policies, cutter)
        + "{{- end }}\n"
    )  # fmt: skip
    blocks = []
    for (kind, sidecar), objects in built.items():
        own = [o for o in objects if key(o) not in common_keys]
        for o in own:
            parametrize(o, cutter)
        condition = f'and (eq .Values.envoy.kind "{kind}") (eq .Values.envoy.sidecar "{sidecar}")'
        blocks.append("{{- if " + condition + " }}\n" + dump(own, cutter) + "{{- end }}\n")
    files["templates/envoy.yaml"] = HEADER + "---\n".join(blocks)
    files["templates/monitoring.yaml"] = HEADER + monitoring_template()
    files["values.yaml"] = _values(cutter.values)
    files["Chart.yaml"] = CHART_YAML
    files["values.schema.json"] = json.dumps(SCHEMA, indent=2) + "\n"
    return files


def _values(found: dict[str, Any]) -> str:
    """values.yaml: every default is what the overlays hold."""
    values = {
        "envoy": {"kind": "DaemonSet", "sidecar": "native", **found["envoy"]},
        "drain": found["drain"],
        "shutdownManager": found["shutdownManager"],
        "xdsServer": found["xdsServer"],
        "certificates": found["certificates"],
        "networkPolicies": {"enabled": True},
        "monitoring": dict.fromkeys(MONITORING, False),
        "images": found["images"],
    }
    notes = {
        "envoy": "Envoy: `kind` DaemonSet (one per node) or Deployment; the shutdown-manager "
        "`sidecar` native (Kubernetes 1.29+) or classic (a regular container).",
        "drain": "The drain policy. terminationGracePeriodSeconds = timeoutSeconds + "
        "graceMarginSeconds; Envoy's --drain-time-s = timeoutSeconds.",
        "shutdownManager": "The sidecar's resources (a CPU limit below 200m starves it, "
        "Contour #7366).",
        "xdsServer": "The control plane: replicas (one leader), resources, and the "
        "IngressClass it serves (every Ingress when empty).",
        "certificates": "mTLS between Envoy and the xds-server: the leader renews leaves and "
        "rotates the CA in the Secrets, waiting propagationDelaySeconds for the kubelet.",
        "networkPolicies": "Ingress and egress NetworkPolicies for every pod.",
        "monitoring": "For the Prometheus operator and Grafana (docs/operations.md): PodMonitors"
        " for the sidecar, Envoy and xds-server, the alerts as a PrometheusRule, the dashboards"
        " as a ConfigMap for Grafana's dashboard sidecar.",
        "images": "Pinned images (built by `make images`).",
    }
    parts = [HEADER.rstrip(), "# Every default is the overlays' value (deploy/envoy-daemonset)."]
    for name, value in values.items():
        comment = textwrap.wrap(notes[name], 98)
        parts += ["", *[f"# {line}" for line in comment]]
        parts.append(yaml.safe_dump({name: value}, sort_keys=False).rstrip())
    return "\n".join(parts) + "\n"


CHART_YAML = """apiVersion: v2
name: envoy-lifecycle
description: Envoy as an ingress data plane that drains before it stops, its xDS control plane
  and its certificates (generated from the kustomize overlays; see values.yaml)
type: application
version: 0.1.0
appVersion: "0.1.0"
"""


def _rule() -> list[dict[str, Any]]:
    return [prometheus_rule(NAMESPACE)]


def _dashboards() -> list[dict[str, Any]]:
    return [dashboards_configmap()]


MONITORING: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "podMonitors": pod_monitors,
    "prometheusRule": _rule,
    "dashboards": _dashboards,
}
"""Each monitoring value and the objects it adds (envoy_lifecycle/monitoring), all off."""


DAY = 86400
"""The longest drain (and wait) the chart takes: more is a typo (2^32 overflows Envoy's
--drain-time-s; a pod held for days is no drain)."""
RESOURCES = {"type": "object", "additionalProperties": False, "properties": {
    part: {"type": "object", "additionalProperties": {"type": ["string", "integer"]}}
    for part in ("limits", "requests")}}  # fmt: skip


def _strict(properties: dict[str, Any], **more: Any) -> dict[str, Any]:
    """An object of exactly these keys: a misspelt key is refused, not silently ignored."""
    return {"type": "object", "additionalProperties": False, "properties": properties, **more}


def _seconds(minimum: int, maximum: int = DAY) -> dict[str, Any]:
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    **_strict({
        "envoy": _strict({
            "kind": {"enum": ["DaemonSet", "Deployment"]},
            "sidecar": {"enum": ["native", "classic"]},
            "resources": RESOURCES}, required=["kind", "sidecar"]),
        "drain": _strict({
            "timeoutSeconds": _seconds(1),
            "minDurationSeconds": _seconds(0),
            "graceMarginSeconds": _seconds(10, 3600)}),
        "shutdownManager": _strict({"resources": RESOURCES}),
        "xdsServer": _strict({
            "replicas": {"type": "integer", "minimum": 1, "maximum": 100},
            "ingressClass": {"type": "string"},
            "resources": RESOURCES}),
        "certificates": _strict({
            "rotate": {"type": "boolean"},
            "propagationDelaySeconds": _seconds(0)}),
        "networkPolicies": _strict({"enabled": {"type": "boolean"}}),
        "monitoring": _strict({name: {"type": "boolean"} for name in MONITORING}),
        "images": _strict({"project": {"type": "string"}, "envoy": {"type": "string"}}),
    }, required=["envoy", "drain", "xdsServer", "certificates", "images"]),
}  # fmt: skip
"""Wrong values are refused by `helm` itself, in one line, before anything renders."""

CROSS_CHECKS = (
    "{{- if gt (int .Values.drain.minDurationSeconds) (int .Values.drain.timeoutSeconds) }}\n"
    '{{- fail (printf "drain.minDurationSeconds (%d) must not exceed drain.timeoutSeconds (%d):'
    ' the sidecar refuses it and never starts" (int .Values.drain.minDurationSeconds)'
    " (int .Values.drain.timeoutSeconds)) }}\n"
    "{{- end }}\n"
)
"""What the schema cannot say (one value against another), said by the templates."""


def monitoring_template() -> str:
    """The objects, each set behind its value; their own `{{ }}` (alert templates, legends)
    escaped from Helm's."""
    blocks = []
    for name, made in MONITORING.items():
        text = yaml.safe_dump_all(made(), sort_keys=False, width=100)
        escaped = re.sub(r"\{\{|\}\}", lambda m: '{{ "' + m[0] + '" }}', text)
        blocks.append(f"{{{{- if .Values.monitoring.{name} }}}}\n---\n{escaped}{{{{- end }}}}\n")
    return "".join(blocks)


def main() -> int:
    for path, text in render().items():
        target = CHART / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
