"""The e2e scenarios in a real cluster: kind, built from deploy/kind.

Creates a cluster (one control plane, two workers: two Envoys), builds our image and loads it,
applies the overlay, then runs the local suite's scenarios (tests/e2e/scenarios.py) through
the port mapping while Envoy pods are deleted, the DaemonSet and the xds-server Deployment
are rolled, and a certificate rotation is forced. Every run asserts zero failed requests and
reports the drains the sidecars recorded as Kubernetes events.

Where docker (with a running engine) or kind is missing, every test is skipped with the
reason; nothing here is faked. `make e2e-kind` runs only this suite.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.lab.clients import Tally, steady_load
from bench.lab.images import ENVOY_TAG
from bench.lab.scenarios import DRAINING_SCENARIOS, Scenario, Target

ROOT = Path(__file__).resolve().parents[3]
CLUSTER = "envoy-lifecycle-e2e"
IMAGE = "envoy-lifecycle:0.1.0"
NAMESPACE = "envoy-lifecycle"
URL = "http://127.0.0.1:8080"


def missing() -> str | None:
    """Why the kind suite cannot run here, or None."""
    for tool in ("docker", "kind", "kubectl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    engine = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    if engine.returncode != 0:
        return "no Docker engine is running (docker info failed)"
    return None


REASON = missing()
pytestmark = [
    pytest.mark.kind,
    pytest.mark.skipif(REASON is not None, reason=f"kind e2e: {REASON}"),
    pytest.mark.timeout(900),
]


def run(*argv: str, stdin: str | None = None, timeout: float = 600) -> str:
    result = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{' '.join(argv)}: {result.stderr[-2000:]}"
    return result.stdout


def kubectl(*argv: str, timeout: float = 300) -> str:
    return run("kubectl", "--context", f"kind-{CLUSTER}", *argv, timeout=timeout)


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    run("kind", "create", "cluster", "--name", CLUSTER,
        "--config", str(ROOT / "deploy/kind/cluster.yaml"), "--wait", "120s")  # fmt: skip
    try:
        run(sys.executable, "-m", "bench.lab.images")  # no registry: every image built here
        for image in (IMAGE, ENVOY_TAG):
            run("kind", "load", "docker-image", image, "--name", CLUSTER)
        manifests = run("kubectl", "kustomize", str(ROOT / "deploy/kind"))
        run("kubectl", "--context", f"kind-{CLUSTER}", "apply", "-f", "-", stdin=manifests)
        kubectl("-n", NAMESPACE, "wait", "--for=condition=complete", "job/certs-init",
                "--timeout=180s")  # fmt: skip
        for workload in ("deployment/xds-server", "daemonset/envoy"):
            kubectl("-n", NAMESPACE, "rollout", "status", workload, "--timeout=300s")
        kubectl("-n", "echo", "rollout", "status", "deployment/echo", "--timeout=300s")
        yield
    finally:
        run("kind", "delete", "cluster", "--name", CLUSTER)


def envoy_pods() -> list[str]:
    names = kubectl("-n", NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/name=envoy",
                    "-o", "jsonpath={.items[*].metadata.name}")  # fmt: skip
    return names.split()


class KindEnvoy(Target):
    """One Envoy pod of the cluster, reached through the NodePort mapping."""

    def url(self, path: str = "/") -> str:
        return URL + path

    @property
    def tcp_port(self) -> int:
        raise NotImplementedError("Ingress has no TCP proxy: that scenario is local only")

    async def delete(self) -> object:
        pod = envoy_pods()[0]
        started = time.monotonic()
        await asyncio.to_thread(kubectl, "-n", NAMESPACE, "delete", "pod", pod, "--wait=true")
        return {"pod": pod, "seconds": time.monotonic() - started}


def drains() -> list[str]:
    """What the sidecars reported (events), for the test log."""
    events = json.loads(kubectl("-n", NAMESPACE, "get", "events", "-o", "json"))
    return [
        f"{e['involvedObject']['name']}: {e['reason']}: {e['message']}"
        for e in events["items"]
        if e["reason"].startswith("Drain")
    ]


def forced_rotation() -> None:
    """The certs-init Job's pod, run now as `certs rotate --force`: both leaves renewed in
    the Secrets, which the kubelet then delivers to the running pods."""
    init = json.loads(kubectl("-n", NAMESPACE, "get", "job", "certs-init", "-o", "json"))
    template = init["spec"]["template"]
    for key in ("labels", "annotations"):
        template["metadata"].pop(key, None)
    template["spec"]["containers"][0]["args"] = [
        "certs", "rotate", "--force", f"--kube-namespace={NAMESPACE}",
    ]  # fmt: skip
    name = f"certs-force-{int(time.time())}"
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"template": template, "backoffLimit": 3},
    }
    run("kubectl", "--context", f"kind-{CLUSTER}", "apply", "-f", "-", stdin=json.dumps(job))
    kubectl("-n", NAMESPACE, "wait", "--for=condition=complete",
            f"job/{name}", "--timeout=300s", timeout=330)  # fmt: skip


KIND_SCENARIOS = {k: v for k, v in DRAINING_SCENARIOS.items() if k != "TCP-proxy connection"}


@pytest.mark.parametrize("scenario", list(KIND_SCENARIOS.values()), ids=list(KIND_SCENARIOS))
async def test_deleting_an_envoy_pod_fails_no_request(cluster: None, scenario: Scenario) -> None:
    result = await scenario(KindEnvoy())
    print(result.report, *drains(), sep="\n")
    assert result.failed == 0, result.tally.errors[:5]
    assert result.tally.ok > 0
    kubectl("-n", NAMESPACE, "rollout", "status", "daemonset/envoy", "--timeout=300s")


@pytest.mark.parametrize(
    "action",
    [
        ("rollout", "restart", "daemonset/envoy"),
        ("rollout", "restart", "deployment/xds-server"),
        ("certs", "rotate", "--force"),
    ],
    ids=["roll the Envoy DaemonSet", "roll the xds-server", "force a certificate rotation"],
)
async def test_disruptions_under_steady_load_fail_no_request(
    cluster: None, action: tuple[str, ...]
) -> None:
    stop, tally = asyncio.Event(), Tally()
    load = [asyncio.create_task(steady_load(URL + "/slow?s=0.02", stop, tally)) for _ in range(4)]
    await asyncio.sleep(2)
    if action[0] == "rollout":
        await asyncio.to_thread(kubectl, "-n", NAMESPACE, *action)
        await asyncio.to_thread(kubectl, "-n", NAMESPACE, "rollout", "status", action[2],
                                "--timeout=600s", timeout=660)  # fmt: skip
    else:
        await asyncio.to_thread(forced_rotation)
        await asyncio.sleep(90)  # the kubelet delivers the new Secrets to the pods
    await asyncio.sleep(2)
    stop.set()
    await asyncio.gather(*load)
    print(*drains(), sep="\n")
    assert tally.failed == 0, tally.errors[:5]
    assert tally.ok > 100
