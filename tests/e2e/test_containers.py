"""The Envoy pod of the rendered manifests as real containers (bench/lab/docker_pod.py), from
the images `make images` built: every client scenario drains with zero failed requests, with
the sidecar native (the default overlay) and classic. The control plane is the rendered
xds-server Deployment's container, in a pod of its own, serving a directory of manifests
(`--manifests` in place of `--kubernetes`: no API server can run here). Skipped, with the
reason, where no Docker engine answers or the images were not built."""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import json
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.lab.backend import Backend
from bench.lab.certs import init_certs, loaded_client_serial, presented_serial, stored_serial
from bench.lab.clients import Tally, steady_load
from bench.lab.docker_pod import (
    Cluster,
    DockerContainer,
    DockerPod,
    docker,
    logs,
    network_gateway,
    until_answers,
)
from bench.lab.envoy import _hcm, _static_cluster
from bench.lab.envoy_gateway_pod import GatewayPodShape
from bench.lab.haproxy import HAProxy, roll
from bench.lab.pod import Container, TerminationReport
from bench.lab.scenarios import DRAINING_SCENARIOS, Result, steady_http1
from bench.lab.wait import until
from bench.lab.xds import endpoint_slice, ingress, rule, service, write_manifests
from tests.e2e.test_images import MISSING
from tests.harness.fake_kube_api import FakeKubeApi
from tests.test_deploy import contour_with_component, find
from xds_server.certs import pki
from xds_server.certs.directory import CertDirectory
from xds_server.certs.rotation import Rotator

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(MISSING is not None, reason=str(MISSING)),
]

XDS_NAME = "xds-server.envoy-lifecycle.svc"
NAMESPACE = "envoy-lifecycle"
LB_ADDRESS = "203.0.113.7"
"""The Envoy Service's load balancer (documentation range), which the leader copies."""
SCENARIOS = {k: v for k, v in DRAINING_SCENARIOS.items() if k != "TCP-proxy connection"}
"""Ingress gives Envoy no TCP-proxy listener (the local suite adds one by hand)."""


class EnvoyInContainers:
    """The pod as a scenario `Target`."""

    def __init__(self, pod: DockerPod) -> None:
        self.pod = pod

    def url(self, path: str = "/") -> str:
        return f"http://{self.pod.ip}:8080{path}"

    @property
    def tcp_port(self) -> int:
        raise NotImplementedError("no TCP-proxy listener from Ingress")

    async def delete(self) -> TerminationReport:
        return await self.pod.delete()

    def story(self) -> str:
        """The pod's timeline and the end of each container's log, for a failure message."""
        steps = [f"{s.at:.2f} {s.container} {s.what}" for s in self.pod.timeline]
        tails = [f"--- {c.name}\n{logs(c)[-1500:]}" for c in
                 [*self.pod.init_containers, *self.pod.containers]]  # fmt: skip
        return "\n".join([*steps, *tails])

    def sidecar_log(self) -> list[dict[str, Any]]:
        text = logs(self.pod.container("shutdown-manager"))
        return [json.loads(x) for x in text.splitlines() if x.startswith("{")]


@pytest.fixture
def certs(workdir: Path) -> CertDirectory:
    return init_certs(workdir / "certs")


@pytest.fixture
def cluster(workdir: Path, certs: CertDirectory) -> Cluster:
    return Cluster(
        workdir=workdir / "pods",
        gateway=network_gateway(),
        secrets={"envoy-tls": certs.root / "envoy", "xds-server-tls": certs.root / "server"},
    )


@pytest.fixture
def docker_pods(workdir: Path) -> Iterator[list[DockerPod]]:
    """Pods to tear down (by id, mounts undone) before their directories go."""
    started: list[DockerPod] = []
    yield started
    for pod in started:
        pod.kill()


def rendered(kind: str, name: str, overlay: str = "envoy-daemonset") -> dict[str, Any]:
    """A pod template of the rendered manifests, the pod's own copy."""
    template: dict[str, Any] = copy.deepcopy(find(overlay, kind, name)["spec"]["template"])
    return template


def xds_template(manifests: Path) -> dict[str, Any]:
    """The rendered xds-server Deployment's pod, serving a directory instead of the API."""
    template = rendered("Deployment", "xds-server")
    spec = template["spec"]
    server = spec["containers"][0]
    kube_only = ("--kubernetes", "--rotate", "--propagation-delay", "--envoy-service")
    server["args"] = [a for a in server["args"] if not a.startswith(kube_only)]
    server["args"].append("--manifests=/manifests")
    server["volumeMounts"].append(
        {"name": "manifests", "mountPath": "/manifests", "readOnly": True}
    )
    spec["volumes"].append({"name": "manifests", "hostPath": {"path": str(manifests)}})
    return template


async def start_xds(
    cluster: Cluster, docker_pods: list[DockerPod], workdir: Path
) -> tuple[DockerPod, Backend]:
    """A backend on the host and the xds-server pod routing every request to it."""
    backend = await Backend(host=cluster.gateway).start()
    manifests = workdir / "manifests"
    manifests.mkdir()
    manifests.chmod(0o755)
    write_manifests(manifests, "app", [
        service("backend", [("http", 80)]),
        endpoint_slice("backend", "http", backend.port, [cluster.gateway]),
        ingress("all", [rule(None, ("/", "Prefix", "backend", 80))]),
    ])  # fmt: skip
    for file in manifests.iterdir():
        file.chmod(0o644)
    xds = DockerPod("xds", xds_template(manifests), cluster)
    docker_pods.append(xds)
    await xds.start()
    await until_answers(f"http://{xds.ip}:8081/readyz")
    cluster.hosts[XDS_NAME] = xds.ip
    return xds, backend


async def start_envoy(
    cluster: Cluster, docker_pods: list[DockerPod], overlay: str, name: str = "envoy"
) -> EnvoyInContainers:
    """An Envoy pod of `overlay`'s template, Ready and serving."""
    kind = "Deployment" if overlay == "envoy-deployment" else "DaemonSet"
    envoy = DockerPod(name, rendered(kind, "envoy", overlay), cluster)
    docker_pods.append(envoy)
    await envoy.start()
    target = EnvoyInContainers(envoy)
    await envoy.until_ready()
    await until_answers(target.url("/"))
    return target


async def start_pods(
    cluster: Cluster, docker_pods: list[DockerPod], workdir: Path, overlay: str
) -> tuple[EnvoyInContainers, Backend]:
    """The xds-server pod, then the Envoy pod, ready and serving through it."""
    _, backend = await start_xds(cluster, docker_pods, workdir)
    return await start_envoy(cluster, docker_pods, overlay), backend


CASES = [("envoy-daemonset", name) for name in SCENARIOS] + [
    ("envoy-daemonset-classic", "steady HTTP/1.1 keep-alive")
]
"""Every client scenario with the sidecar native (the default overlay), one classic."""


async def test_every_client_scenario_drains_the_deployed_pod_with_zero_failed_requests(
    cluster: Cluster, docker_pods: list[DockerPod], workdir: Path
) -> None:
    """One Envoy pod per case, side by side (one control plane): each deleted under its
    clients, each on its own."""
    _, backend = await start_xds(cluster, docker_pods, workdir)
    try:
        targets = await asyncio.gather(
            *(start_envoy(cluster, docker_pods, overlay, f"envoy{i}")
              for i, (overlay, _) in enumerate(CASES))
        )  # fmt: skip
        results = await asyncio.gather(
            *(SCENARIOS[name](target) for (_, name), target in zip(CASES, targets, strict=True))
        )
    finally:
        await backend.stop()
    for (overlay, name), target, result in zip(CASES, targets, results, strict=True):
        _drained_cleanly(f"{overlay}: {name}", target, result)


def _drained_cleanly(case: str, target: EnvoyInContainers, result: Result) -> None:
    assert result.failed == 0, (case, result.tally.errors[:3], target.story())
    assert result.tally.ok > 0, case
    report = result.report
    assert isinstance(report, TerminationReport)
    assert not report.killed, case
    envoy, sidecar = report.containers["envoy"], report.containers["shutdown-manager"]
    assert envoy.hook_result == "ok", case
    assert sidecar.hook_result == "ok", (case, "the drain hook exits 0 when drained")
    finished = [x for x in target.sidecar_log() if x.get("event") == "finished"]
    assert [x["outcome"] for x in finished] in (["drained"], ["quiescent"]), case


async def test_certificates_rotate_under_load_through_the_projected_secret_volumes(
    cluster: Cluster, certs: CertDirectory, docker_pods: list[DockerPod], workdir: Path
) -> None:
    """Both leaves renewed in the Secrets' sources mid-load: the pods' volumes get the new
    version by one swap, Envoy loads its new client certificate, the server presents its
    new one, and no request fails."""
    target, backend = await start_pods(cluster, docker_pods, workdir, "envoy-daemonset")
    xds = docker_pods[0]
    admin = target.pod.volume_path("admin") / "admin.sock"
    stop, tally = asyncio.Event(), Tally()
    load = [asyncio.create_task(steady_load(target.url("/"), stop, tally)) for _ in range(2)]
    try:
        await asyncio.sleep(0.5)
        before = {which: stored_serial(certs, which) for which in ("server", "envoy")}
        await asyncio.to_thread(Rotator(certs, propagation_delay=1).step, True)
        after = {which: stored_serial(certs, which) for which in ("server", "envoy")}
        assert after["envoy"] != before["envoy"]
        assert after["server"] != before["server"]
        await until(lambda: _loaded(admin, after["envoy"]), timeout=20)
        await until(lambda: _presented(xds.ip, certs, after["server"]), timeout=20)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*load)
        await backend.stop()
    assert tally.failed == 0, tally.errors[:3]
    assert tally.ok > 50
    _locked_down_as_declared(target.pod.container("shutdown-manager"))


def _locked_down_as_declared(container: Container) -> None:
    """The sidecar's securityContext and limits, as the engine applied them (a CPU limit is
    what starved Contour's sidecar, #7366: it must be a real cgroup limit here too)."""
    assert isinstance(container, DockerContainer)
    inspected = json.loads(docker("inspect", container.id))[0]
    host = inspected["HostConfig"]
    assert host["NanoCpus"] == 200_000_000
    assert host["Memory"] == 128 * 2**20
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["GroupAdd"] == ["65532"]
    assert inspected["Config"]["User"] == "65532:65532"


async def _loaded(admin: Path, serial: str) -> bool:
    return await loaded_client_serial(admin) == serial


async def _presented(host: str, certs: CertDirectory, serial: str) -> bool:
    return await presented_serial(8001, certs, host=host) == serial


async def test_a_rolling_restart_behind_haproxy_fails_no_request(
    cluster: Cluster, docker_pods: list[DockerPod], workdir: Path
) -> None:
    """Two Envoy pods behind HAProxy (health checks on each pod's /ready); each in turn is
    deleted the kubelet's way and replaced by a new pod, whose address HAProxy is given as
    an endpoint's would be. Under continuous load, no request fails."""
    _, backend = await start_xds(cluster, docker_pods, workdir)
    nodes = {f"n{i}": await start_envoy(cluster, docker_pods, "envoy-daemonset", f"n{i}")
             for i in range(2)}  # fmt: skip
    proxy = HAProxy(workdir, {n: (t.pod.ip, 8080, 8002) for n, t in nodes.items()})

    async def replace(name: str) -> TerminationReport:
        report = await nodes[name].delete()
        new = await start_envoy(cluster, docker_pods, "envoy-daemonset", f"{name}-next")
        await proxy.move(name, new.pod.ip)
        return report

    try:
        await proxy.start()
        tally, reports = await roll(proxy, list(nodes), replace)
    finally:
        proxy.stop()
        await backend.stop()
    assert tally.failed == 0, tally.errors[:5]
    assert tally.ok > 300
    for report in reports:
        assert not report.killed
        assert report.containers["shutdown-manager"].hook_result == "ok"


async def serving_api(host: str, workdir: Path) -> FakeKubeApi:
    """The FAKE API server over TLS on the pods' network, its CA for in-cluster clients."""
    day = datetime.timedelta(days=1)
    ca = pki.issue_ca("fake-kube-api", day, "ecdsa-p256")
    leaf = pki.issue_leaf(ca, "kubernetes", [host, "kubernetes.default.svc"], "server", day,
                          "ecdsa-p256")  # fmt: skip
    (workdir / "api.crt").write_bytes(leaf.certificate)
    (workdir / "api.key").write_bytes(leaf.key)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(workdir / "api.crt", workdir / "api.key")
    api = FakeKubeApi(ca=ca.certificate)
    return await api.start(host=host, tls=tls)


async def test_the_control_plane_as_deployed_issues_certificates_and_serves_envoy(
    docker_pods: list[DockerPod], workdir: Path
) -> None:
    """The rendered certs-init Job and xds-server Deployment, as they are, against the FAKE
    API server (in-cluster credentials over TLS): the Job creates the three Secrets, the
    server (leader) serves the Ingress from the API to the Envoy pod, whose certificate is
    the Job's, and writes the Ingress status; a forced rotation (a Job) reaches Envoy through
    its Secret volume under load; a deletion drains; no request fails."""
    gateway = network_gateway()
    api = await serving_api(gateway, workdir)
    cluster = Cluster(workdir=workdir / "pods", gateway=gateway, api=api)
    backend = await Backend(host=gateway).start()
    try:
        for obj in (
            service("backend", [("http", 80)]),
            endpoint_slice("backend", "http", backend.port, [gateway]),
            ingress("all", [rule(None, ("/", "Prefix", "backend", 80))]),
            service("envoy", [("http", 80)], namespace=NAMESPACE)
            | {"status": {"loadBalancer": {"ingress": [{"ip": LB_ADDRESS}]}}},
        ):
            api.apply(obj)
        job = DockerPod("certs-init", rendered("Job", "certs-init"), cluster)
        docker_pods.append(job)
        await job.start()
        await until(lambda: _done(job), timeout=120)
        assert job.succeeded, logs(job.containers[0])
        names = {name for (namespace, name) in api.objects["Secret"] if namespace == NAMESPACE}
        assert names == {"xds-server-ca", "xds-server-tls", "envoy-tls"}

        xds = DockerPod("xds", rendered("Deployment", "xds-server"), cluster)
        docker_pods.append(xds)
        await xds.start()
        await xds.until_ready()
        cluster.hosts[XDS_NAME] = xds.ip
        target = await start_envoy(cluster, docker_pods, "envoy-daemonset")
        await until(lambda: _has_status(api), timeout=30)
        assert ("envoy-lifecycle", "xds-server") in api.objects["Lease"]
        rotated = await _rotate_under_load(api, cluster, docker_pods, target)
        result = await steady_http1(target)
    finally:
        await backend.stop()
        await api.stop()
    assert rotated.failed == 0, rotated.errors[:3]
    assert rotated.ok > 20
    assert result.failed == 0, (result.tally.errors[:3], target.story())
    assert result.tally.ok > 0


async def _rotate_under_load(
    api: FakeKubeApi, cluster: Cluster, docker_pods: list[DockerPod], target: EnvoyInContainers
) -> Tally:
    """`xds-server certs rotate --force` as a Job of the certs-init Job's pod, mid-load: the
    Secrets change in the API, the kubelet's volume follows, Envoy loads its new leaf."""
    before = _leaf_serial(api, "envoy-tls")
    stop, tally = asyncio.Event(), Tally()
    load = [asyncio.create_task(steady_load(target.url("/"), stop, tally)) for _ in range(2)]
    try:
        template = rendered("Job", "certs-init")
        args = template["spec"]["containers"][0]["args"]
        template["spec"]["containers"][0]["args"] = [
            "certs", "rotate", "--force", *[a for a in args if a.startswith("--kube-namespace")]
        ]  # fmt: skip
        job = DockerPod("certs-rotate", template, cluster)
        docker_pods.append(job)
        await job.start()
        await until(lambda: _done(job), timeout=120)
        assert job.succeeded, logs(job.containers[0])
        after = _leaf_serial(api, "envoy-tls")
        assert after != before
        admin = target.pod.volume_path("admin") / "admin.sock"
        await until(lambda: _loaded(admin, after), timeout=30)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*load)
    return tally


def _leaf_serial(api: FakeKubeApi, secret: str) -> str:
    data = api.objects["Secret"][(NAMESPACE, secret)]["data"]["tls.crt"]
    return pki.serial_hex(pki.load_bundle(base64.b64decode(data))[0])


async def _done(pod: DockerPod) -> bool:
    return not any(c.running for c in pod.containers)


async def _has_status(api: FakeKubeApi) -> bool:
    found = api.objects["Ingress"][("default", "all")].get("status") or {}
    return bool(found.get("loadBalancer", {}).get("ingress") == [{"ip": LB_ADDRESS}])


class GatewayInContainers(EnvoyInContainers):
    """Envoy Gateway's pod: its HTTP listener is on 10080."""

    def url(self, path: str = "/") -> str:
        return f"http://{self.pod.ip}:10080{path}"


async def start_gateway_pod(
    cluster: Cluster, docker_pods: list[DockerPod], backend: Backend, fast_liveness: bool = False
) -> GatewayInContainers:
    """Envoy Gateway's Envoy pod (bench/lab/envoy_gateway_pod.py) with our image as its
    shutdown manager, Ready. `fast_liveness`: the sidecar's startup and liveness probes
    every second (the kubelet's shortest period) instead of every 10 s."""
    shape = GatewayPodShape(backend=(cluster.gateway, backend.port), drain_timeout=10, min_drain=2)
    template = shape.template()
    if fast_liveness:
        sidecar = template["spec"]["containers"][1]
        for probe in ("startupProbe", "livenessProbe"):
            sidecar[probe]["periodSeconds"] = 1
    pod = DockerPod("eg", template, cluster)
    docker_pods.append(pod)
    await pod.start()
    await pod.until_ready()
    target = GatewayInContainers(pod)
    await until_answers(target.url("/"))
    return target


async def test_envoy_gateways_pod_with_our_image_drains_with_zero_failed_requests(
    cluster: Cluster, docker_pods: list[DockerPod]
) -> None:
    """The pod Envoy Gateway renders, as it renders it (its ports, probes, hooks and command
    lines), our image in place of its shutdown manager's: deleted under load, it drains
    with zero failed requests; both hooks succeed; nothing is killed."""
    backend = await Backend(host=cluster.gateway).start()
    try:
        target = await start_gateway_pod(cluster, docker_pods, backend)
        result = await steady_http1(target)
    finally:
        await backend.stop()
    _drained_cleanly("Envoy Gateway's pod", target, result)


async def test_envoy_gateways_pod_is_ready_again_after_a_liveness_restart_of_our_sidecar(
    cluster: Cluster, docker_pods: list[DockerPod]
) -> None:
    """The sidecar's liveness probe stops getting answers (its port dropped in the pod's
    network namespace), the kubelet restarts it, running its preStop hook, which drains
    Envoy: the restarted sidecar restores Envoy and the pod is Ready and serving again
    (Envoy Gateway's own stays DRAINING, #5832)."""
    backend = await Backend(host=cluster.gateway).start()
    try:
        target = await start_gateway_pod(cluster, docker_pods, backend, fast_liveness=True)
        pod = target.pod
        await until(lambda: _stepped(pod, "startup probe passed"), timeout=30)
        rule = ["INPUT", "-p", "tcp", "--dport", "19002", "-j", "DROP"]
        _in_pod_network(pod, "iptables", "-I", *rule)
        try:
            await until(lambda: _stepped(pod, "liveness probe failed"), timeout=30)
        finally:
            _in_pod_network(pod, "iptables", "-D", *rule)
        await until(lambda: _stepped(pod, "restarted"), timeout=60)
        await pod.until_ready()
        await until_answers(target.url("/"), timeout=10)
    finally:
        await backend.stop()
    restored = [x for x in target.sidecar_log() if "restored it" in x.get("msg", "")]
    assert len(restored) == 1, target.story()
    assert pod.container("shutdown-manager").restarts == 1


def _in_pod_network(pod: DockerPod, *argv: str) -> None:
    pid = docker("inspect", "--format", "{{.State.Pid}}", pod.pause)
    subprocess.run(["nsenter", "--target", pid, "--net", *argv], check=True)


async def _stepped(pod: DockerPod, what: str) -> bool:
    return any(s.what == what and s.container == "shutdown-manager" for s in pod.timeline)


def contour_bootstrap(backend: tuple[str, int]) -> dict[str, Any]:
    """What Contour's `contour bootstrap` init container and its xDS would give Envoy, as a
    static file (no Contour image can be had here): the admin API on /admin/admin.sock, the
    HTTP listener on 8080 to the backend, and `stats-health` on 8002 for /ready and /stats."""
    admin = {"pipe": {"path": "/admin/admin.sock"}}
    health = {"virtual_hosts": [{"name": "health", "domains": ["*"], "routes": [
        {"match": {"path": "/ready"}, "route": {"cluster": "envoy-admin"}},
        {"match": {"prefix": "/stats"}, "route": {"cluster": "envoy-admin"}}]}]}  # fmt: skip
    serving = {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]}  # fmt: skip
    address = {"socket_address": {"address": backend[0], "port_value": backend[1]}}
    return {
        "admin": {"address": admin},
        "static_resources": {
            "listeners": [
                {"name": "ingress_http", "address": _any(8080),
                 "filter_chains": [{"filters": [_hcm("ingress_http", serving)]}]},
                {"name": "stats-health", "address": _any(8002),
                 "filter_chains": [{"filters": [_hcm("stats", health)]}]},
            ],
            "clusters": [_static_cluster("envoy-admin", admin),
                         _static_cluster("backend", address)],
        },
    }  # fmt: skip


def _any(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "0.0.0.0", "port_value": port}}


async def test_contours_pod_with_our_component_drains_with_zero_failed_requests(
    cluster: Cluster, certs: CertDirectory, docker_pods: list[DockerPod], workdir: Path
) -> None:
    """Contour's Envoy DaemonSet (tests/contour/envoy.yaml) patched by
    deploy/components/contour, its pod run as rendered, but for the bootstrap init container
    (Contour's image): the file it would write is given to Envoy instead. Deleted under load,
    it drains with zero failed requests; both hooks succeed; nothing is killed."""
    backend = await Backend(host=cluster.gateway).start()
    config = workdir / "contour-config"
    config.mkdir(mode=0o755)
    (config / "envoy.json").write_text(
        json.dumps(contour_bootstrap((cluster.gateway, backend.port)))
    )
    (config / "envoy.json").chmod(0o644)
    template = copy.deepcopy(contour_with_component()["spec"]["template"])
    spec = template["spec"]
    del spec["initContainers"]
    spec["volumes"] = [{"name": "envoy-config", "hostPath": {"path": str(config)}}
                       if v["name"] == "envoy-config" else v for v in spec["volumes"]]  # fmt: skip
    cluster.secrets["envoycert"] = certs.root / "envoy"
    try:
        pod = DockerPod("contour", template, cluster)
        docker_pods.append(pod)
        await pod.start()
        await pod.until_ready()
        target = EnvoyInContainers(pod)
        await until_answers(target.url("/"))
        result = await steady_http1(target)
    finally:
        await backend.stop()
    _drained_cleanly("Contour's pod with our component", target, result)
