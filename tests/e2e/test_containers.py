"""The Envoy pod of the rendered manifests as real containers (bench/lab/docker_pod.py), from
the images `make images` built: every client scenario drains with zero failed requests, with
the sidecar native (the default overlay) and classic. The control plane is the rendered
xds-server Deployment's container, in a pod of its own, serving a directory of manifests
(`--manifests` in place of `--kubernetes`: no API server can run here). Skipped, with the
reason, where no Docker engine answers or the images were not built."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bench.lab.backend import Backend
from bench.lab.certs import init_certs
from bench.lab.docker_pod import Cluster, DockerPod, logs, network_gateway
from bench.lab.pod import TerminationReport
from bench.lab.scenarios import DRAINING_SCENARIOS, Result, Scenario
from bench.lab.xds import endpoint_slice, ingress, rule, service, write_manifests
from tests.e2e.test_images import MISSING
from tests.test_deploy import find

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(MISSING is not None, reason=str(MISSING)),
]

XDS_NAME = "xds-server.envoy-lifecycle.svc"
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
def cluster(workdir: Path) -> Cluster:
    certs = init_certs(workdir / "certs")
    return Cluster(
        workdir=workdir / "pods",
        gateway=network_gateway(),
        secrets={"envoy-tls": certs.root / "envoy", "xds-server-tls": certs.root / "server"},
    )


@pytest.fixture
def docker_pods() -> Iterator[list[DockerPod]]:
    started: list[DockerPod] = []
    yield started
    for pod in started:
        pod.kill()


async def until_ok(url: str, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient(trust_env=False, timeout=2) as client:
        while loop.time() < deadline:
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(url)


def xds_template(manifests: Path) -> dict[str, Any]:
    """The rendered xds-server Deployment's pod, serving a directory instead of the API."""
    template = copy.deepcopy(
        find("envoy-daemonset", "Deployment", "xds-server")["spec"]["template"]
    )
    spec = template["spec"]
    server = spec["containers"][0]
    kube_only = ("--kubernetes", "--rotate", "--propagation-delay", "--envoy-service")
    server["args"] = [a for a in server["args"] if not a.startswith(kube_only)]
    server["args"].append("--manifests=/manifests")
    server["volumeMounts"].append(
        {"name": "manifests", "mountPath": "/manifests", "readOnly": True}
    )
    spec["volumes"].append({"name": "manifests", "hostPath": {"path": str(manifests)}})
    return dict(template)


async def start_pods(
    cluster: Cluster, docker_pods: list[DockerPod], workdir: Path, overlay: str
) -> tuple[EnvoyInContainers, Backend]:
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
    await until_ok(f"http://{xds.ip}:8081/readyz")
    cluster.hosts[XDS_NAME] = xds.ip
    kind = "Deployment" if overlay == "envoy-deployment" else "DaemonSet"
    template = find(overlay, kind, "envoy")["spec"]["template"]
    envoy = DockerPod("envoy", yaml.safe_load(yaml.safe_dump(template)), cluster)
    docker_pods.append(envoy)
    await envoy.start()
    target = EnvoyInContainers(envoy)
    await envoy.until_ready()
    await until_ok(target.url("/"))
    return target, backend


@pytest.mark.parametrize(
    ("overlay", "scenario"),
    [("envoy-daemonset", s) for s in SCENARIOS.values()]
    + [("envoy-daemonset-classic", SCENARIOS["steady HTTP/1.1 keep-alive"])],
    ids=[f"native-{k}" for k in SCENARIOS] + ["classic-steady HTTP/1.1 keep-alive"],
)
async def test_the_deployed_pod_drains_with_zero_failed_requests(
    overlay: str,
    scenario: Scenario,
    cluster: Cluster,
    docker_pods: list[DockerPod],
    workdir: Path,
) -> None:
    target, backend = await start_pods(cluster, docker_pods, workdir, overlay)
    try:
        result: Result = await scenario(target)
    finally:
        await backend.stop()
    assert result.failed == 0, (result.tally.errors[:3], target.story())
    assert result.tally.ok > 0
    report = result.report
    assert isinstance(report, TerminationReport)
    assert not report.killed
    envoy, sidecar = report.containers["envoy"], report.containers["shutdown-manager"]
    assert envoy.hook_result == "ok"
    assert sidecar.hook_result == "ok", "the drain hook exits 0 when drained"
    finished = [x for x in target.sidecar_log() if x.get("event") == "finished"]
    assert [x["outcome"] for x in finished] in (["drained"], ["quiescent"])
