"""The sidecar as a native sidecar (an init container with restartPolicy Always), with a real
Envoy and the FAKE API server (tests/harness/fake_kube_api.py): it starts first and gates
Envoy, is restarted when it dies, stops after Envoy, and the drain starts even where its own
preStop hook would only come after Envoy has exited."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bench.lab.backend import Backend
from bench.lab.clients import Tally, steady_load
from bench.lab.envoy_pod import EnvoyPod, envoy_pod
from bench.lab.pod import SidecarHooks, TerminationReport
from bench.lab.scenarios import steady_http1
from bench.lab.xds import XdsServer
from tests.harness.fake_kube_api import FakeKubeApi

pytestmark = pytest.mark.timeout(60)


async def native_pod(
    pods: list[EnvoyPod],
    workdir: Path,
    backend: Backend,
    xds: XdsServer,
    api: FakeKubeApi | None,
    hooks: SidecarHooks = "at-deletion",
    grace_period: float = 10.0,
) -> EnvoyPod:
    pod = envoy_pod(
        workdir, backend.port, xds=xds, wiring="native", kube=api, sidecar_hooks=hooks,
        grace_period=grace_period, drain_timeout=min(8.0, grace_period - 1),
    )  # fmt: skip
    pods.append(pod)
    return await pod.start()


def drain_triggers(pod: EnvoyPod) -> list[str]:
    lines = (pod.shared / "shutdown-manager.log").read_text().splitlines()
    return [
        str(json.loads(x)["trigger"])
        for x in lines
        if x.startswith("{") and '"drain requested by' in x
    ]


async def test_envoy_starts_only_once_the_sidecar_is_up(
    workdir: Path, backend: Backend, pods: list[EnvoyPod], xds: XdsServer, api: FakeKubeApi
) -> None:
    pod = await native_pod(pods, workdir, backend, xds, api)
    steps = {(s.container, s.what): s.at for s in pod.pod.timeline}
    assert (
        steps[("shutdown-manager", "started")] < steps[("shutdown-manager", "startup probe passed")]
    )
    assert steps[("shutdown-manager", "startup probe passed")] <= steps[("envoy", "started")]


async def test_a_sidecar_that_dies_while_the_pod_runs_comes_back_and_still_drains(
    workdir: Path, backend: Backend, pods: list[EnvoyPod], xds: XdsServer, api: FakeKubeApi
) -> None:
    pod = await native_pod(pods, workdir, backend, xds, api)
    sidecar = pod.pod.container("shutdown-manager")
    stop, tally = asyncio.Event(), Tally()
    load = asyncio.create_task(steady_load(pod.url("/"), stop, tally, pause=0.01))
    await asyncio.sleep(0.3)
    assert sidecar.proc is not None
    sidecar.proc.kill()
    for _ in range(200):
        if sidecar.restarts == 1 and await _healthy(pod):
            break
        await asyncio.sleep(0.05)
    assert sidecar.restarts == 1
    assert await pod.envoy.state() == "LIVE", "Envoy serves on while the sidecar restarts"
    stop.set()
    await load
    assert tally.failed == 0, tally.errors[:3]
    result = await steady_http1(pod)
    assert result.failed == 0, result.tally.errors[:3]
    report = result.report
    assert isinstance(report, TerminationReport)
    assert not report.killed
    assert report.containers["shutdown-manager"].hook_result == "ok"


async def _healthy(pod: EnvoyPod) -> bool:
    import httpx

    try:
        async with httpx.AsyncClient(trust_env=False, timeout=1) as client:
            return (await client.get(f"{pod.sidecar_url}/healthz")).status_code == 200
    except httpx.HTTPError:
        return False


async def test_the_drain_starts_even_if_the_sidecars_hook_came_only_in_its_turn(
    workdir: Path, backend: Backend, pods: list[EnvoyPod], xds: XdsServer, api: FakeKubeApi
) -> None:
    """The model of DESIGN.md 1.7 (hook after Envoy exits): Envoy's preStop starts the drain,
    the API server having confirmed the deletion; the sidecar's late hook finds it done."""
    pod = await native_pod(pods, workdir, backend, xds, api, hooks="in-turn")
    result = await steady_http1(pod)
    assert result.failed == 0, result.tally.errors[:3]
    report = result.report
    assert isinstance(report, TerminationReport)
    envoy, sidecar = report.containers["envoy"], report.containers["shutdown-manager"]
    assert not report.killed
    assert envoy.hook_result == "ok"
    assert sidecar.hook_started is not None
    assert envoy.exited_at is not None
    assert sidecar.hook_started >= envoy.exited_at
    assert sidecar.hook_result == "ok", "the late hook joins the finished drain, exit 0"
    assert drain_triggers(pod) == [
        "Envoy's preStop (/shutdown), API server: deletionTimestamp "
        + api.objects["Pod"][("envoy-lifecycle", "envoy")]["metadata"]["deletionTimestamp"].replace(
            "Z", "+00:00"
        )
    ]


async def test_without_the_api_check_that_model_would_hold_envoy_to_the_deadline(
    workdir: Path, backend: Backend, pods: list[EnvoyPod], xds: XdsServer
) -> None:
    """The negative control: no --confirm-deletion, hook in turn: nothing starts the drain
    until Envoy's preStop gives up at the grace period, and by then no grace is left for the
    sidecar's hook (the kubelet skips it): only SIGTERM comes. So the API check is needed."""
    pod = await native_pod(pods, workdir, backend, xds, None, hooks="in-turn", grace_period=3)
    report = await pod.delete()
    assert report.containers["envoy"].hook_result == "killed at deadline"
    assert report.containers["shutdown-manager"].hook_started is None
    assert drain_triggers(pod) == ["SIGTERM"]
