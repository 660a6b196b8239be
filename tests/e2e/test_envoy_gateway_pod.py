"""Envoy Gateway's Envoy pod with our image as its shutdown manager
(bench/lab/envoy_gateway_pod.py), as processes in the pod runner: the command lines Envoy
Gateway writes drive our sidecar and hook, every client scenario drains with zero failed
requests, and a liveness restart of the sidecar (which runs its preStop hook: Envoy Gateway
#5832) leaves Envoy LIVE and Ready again. The same pod in real containers is in
test_containers.py."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.lab.backend import Backend
from bench.lab.envoy_gateway_pod import GatewayPodShape, Ports
from bench.lab.pod import Pod, TerminationReport
from bench.lab.scenarios import DRAINING_SCENARIOS, Result, Scenario
from bench.lab.wait import until

pytestmark = pytest.mark.timeout(90)

SCENARIOS = {k: v for k, v in DRAINING_SCENARIOS.items() if k != "TCP-proxy connection"}
"""Envoy Gateway's HTTP listener only (the TCP-proxy case is our own pods')."""


class GatewayPod:
    """The pod as a scenario `Target`."""

    def __init__(self, shape: GatewayPodShape, pod: Pod, workdir: Path) -> None:
        self.shape, self.pod, self.workdir = shape, pod, workdir

    def url(self, path: str = "/") -> str:
        return self.shape.url("127.0.0.1", path)

    @property
    def tcp_port(self) -> int:
        raise NotImplementedError("Envoy Gateway's pod here has no TCP-proxy listener")

    async def delete(self) -> TerminationReport:
        return await self.pod.delete()

    def sidecar_log(self) -> list[dict[str, Any]]:
        text = (self.workdir / "shutdown-manager.log").read_text()
        return [json.loads(x) for x in text.splitlines() if x.startswith("{")]

    async def ready(self) -> bool:
        """The pod's Ready condition: both readiness probes (Envoy's /ready on its ready
        listener, the sidecar's /healthz) answer 200."""
        ports = self.shape.ports
        urls = [
            f"http://127.0.0.1:{ports.ready}/ready",
            f"http://127.0.0.1:{ports.sidecar}/healthz",
        ]
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=1) as client:
                return all([(await client.get(url)).status_code == 200 for url in urls])
        except httpx.HTTPError:
            return False

    async def envoy_state(self) -> str:
        url = f"http://127.0.0.1:{self.shape.ports.admin}/server_info"
        async with httpx.AsyncClient(trust_env=False, timeout=2) as client:
            return str((await client.get(url)).json()["state"])


@pytest.fixture
def gateway_pods() -> Any:
    started: list[Pod] = []
    yield started
    for pod in started:
        pod.kill()


async def start(
    workdir: Path, backend: Backend, started: list[Pod], name: str = "eg", **kw: float
) -> GatewayPod:
    shape = GatewayPodShape(backend=("127.0.0.1", backend.port), drain_timeout=10, min_drain=2,
                            ports=Ports.free(), address="127.0.0.1")  # fmt: skip
    pod = shape.process_pod(workdir / name, name, **kw)
    started.append(pod)
    await pod.start()
    target = GatewayPod(shape, pod, workdir / name)
    await until(target.ready, timeout=30)
    return target


@pytest.mark.parametrize("scenario", list(SCENARIOS.values()), ids=list(SCENARIOS))
async def test_every_client_scenario_drains_envoy_gateways_pod_with_zero_failed_requests(
    scenario: Scenario, workdir: Path, backend: Backend, gateway_pods: list[Pod]
) -> None:
    target = await start(workdir, backend, gateway_pods)
    result: Result = await scenario(target)
    report = result.report
    assert isinstance(report, TerminationReport)
    assert result.failed == 0, result.tally.errors[:3]
    assert result.tally.ok > 0
    envoy, sidecar = report.containers["envoy"], report.containers["shutdown-manager"]
    assert envoy.hook_result == "ok", "/shutdown/ready answered 200 at the drain's end"
    assert sidecar.hook_result == "ok", "`envoy-gateway envoy shutdown` exits 0 when drained"
    assert not report.killed
    finished = [x for x in target.sidecar_log() if x.get("event") == "finished"]
    assert [x["outcome"] for x in finished] in (["drained"], ["quiescent"])
    # Envoy Gateway's stats and ready listeners (probes, scrapes) were never counted.
    counted = {name for x in target.sidecar_log() for name in x.get("listeners", {})}
    ports = target.shape.ports
    assert counted == {f"127.0.0.1_{ports.http}"}, counted


async def test_a_liveness_restart_of_the_sidecar_leaves_envoy_live_and_ready(
    workdir: Path, backend: Backend, gateway_pods: list[Pod]
) -> None:
    """The sidecar stalls (SIGSTOP: a starved process), its liveness probe fails three times,
    the kubelet stops it (its preStop hook drains Envoy, as it does in Envoy Gateway's pods)
    and starts it again: the new sidecar finds Envoy DRAINING and restores it, and the pod is
    Ready again. Envoy Gateway's own sidecar leaves it DRAINING for good (#5832)."""
    target = await start(workdir, backend, gateway_pods, sidecar_liveness_period=0.2)
    sidecar = target.pod.container("shutdown-manager")
    assert sidecar.proc is not None
    await until(lambda: _happened(target.pod, "startup probe passed"), timeout=10)
    sidecar.proc.send_signal(signal.SIGSTOP)
    await until(lambda: _happened(target.pod, "liveness probe failed"), timeout=10)
    sidecar.proc.send_signal(signal.SIGCONT)
    await until(lambda: _happened(target.pod, "restarted"), timeout=40)
    await until(target.ready, timeout=30)
    assert await target.envoy_state() == "LIVE"
    assert sidecar.restarts == 1
    restored = [x for x in target.sidecar_log() if "restored it" in x.get("msg", "")]
    assert len(restored) == 1
    async with httpx.AsyncClient(trust_env=False) as client:
        assert (await client.get(target.url("/"))).status_code == 200


async def _happened(pod: Pod, what: str) -> bool:
    await asyncio.sleep(0)
    return any(step.what == what and step.container == "shutdown-manager" for step in pod.timeline)
