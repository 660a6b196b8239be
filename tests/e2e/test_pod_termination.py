"""A real pod's termination, the kubelet's way, under every kind of client, with the sidecar
classic and native, its routes from an Ingress and (native) from an HTTPRoute on a Gateway:
zero failed requests, the drain released by its own condition (never the deadline, the
grace period or SIGKILL), and the drain's end posted as an event (the API server is a FAKE,
tests/harness/fake_kube_api.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.lab.backend import Backend
from bench.lab.envoy_pod import GRACE_PERIOD, MIN_DRAIN, WIRINGS, EnvoyPod, Wiring, envoy_pod
from bench.lab.pod import TerminationReport
from bench.lab.scenarios import DRAINING_SCENARIOS, Result, long_streams
from bench.lab.xds import Routes, XdsServer, serve_one_backend
from tests.harness.fake_kube_api import FakeKubeApi

pytestmark = pytest.mark.timeout(60)


async def start_pod(
    pods: list[EnvoyPod],
    workdir: Path,
    backend: Backend,
    xds: XdsServer,
    wiring: Wiring = "classic",
    api: FakeKubeApi | None = None,
    **kw: float,
) -> EnvoyPod:
    """The pod as deployed: its Envoy gets its whole HTTP config from the xDS server."""
    pod = envoy_pod(workdir, backend.port, xds=xds, wiring=wiring, kube=api, **kw)  # type: ignore[arg-type]
    pods.append(pod)
    return await pod.start()


HTTP_SCENARIOS = [name for name in DRAINING_SCENARIOS if name != "TCP-proxy connection"]
"""The scenarios whose requests go through Envoy's HTTP routes (the TCP proxy is static)."""
CASES = [
    *(pytest.param(n, w, "ingress", id=f"{n}-{w}") for n in DRAINING_SCENARIOS for w in WIRINGS),
    *(pytest.param(n, "native", "gateway", id=f"{n}-native-httproute") for n in HTTP_SCENARIOS),
]


@pytest.mark.parametrize(("name", "wiring", "routes"), CASES)
async def test_pod_terminates_with_zero_failed_requests(
    name: str,
    wiring: Wiring,
    routes: Routes,
    workdir: Path,
    backend: Backend,
    pods: list[EnvoyPod],
    api: FakeKubeApi,
) -> None:
    xds = await serve_one_backend(workdir / "xds", backend.port, routes=routes)
    try:
        pod = await start_pod(pods, workdir, backend, xds, wiring, api)
        result: Result = await DRAINING_SCENARIOS[name](pod)
    finally:
        xds.stop()
    report = result.report
    assert isinstance(report, TerminationReport)

    assert result.failed == 0, result.tally.errors
    assert result.tally.ok > 0
    envoy, sidecar = report.containers["envoy"], report.containers["shutdown-manager"]
    assert envoy.hook_result == "ok"
    assert sidecar.hook_result == "ok", "the drain hook exits 0 when drained"
    assert not report.killed, "nothing waits for SIGKILL"
    assert envoy.sigterm_at is not None
    assert sidecar.hook_started is not None
    assert envoy.sigterm_at >= sidecar.hook_started + MIN_DRAIN, "no SIGTERM before the minimum"
    # Released by its own condition (no connection left, or only idle ones), never by the
    # deadline or the grace period; how soon after the last client is bench/drain.py's to
    # measure (a wall-clock bound here failed on a starved CPU: Envoy took 1.6 s to exit).
    assert pod.drain_outcome()["outcome"] in ("drained", "quiescent")
    if wiring == "native":
        assert sidecar.sigterm_at is not None
        assert envoy.exited_at is not None
        assert sidecar.sigterm_at >= envoy.exited_at, "a native sidecar stops after Envoy"
    reasons = [e["reason"] for e in api.objects["Event"].values()]
    assert reasons == ["DrainStarted", "DrainCompleted"], reasons


@pytest.mark.parametrize("wiring", WIRINGS)
async def test_client_outliving_the_deadline_ends_at_the_grace_period_and_is_reported(
    wiring: Wiring,
    workdir: Path,
    backend: Backend,
    pods: list[EnvoyPod],
    xds: XdsServer,
    api: FakeKubeApi,
) -> None:
    pod = await start_pod(
        pods, workdir, backend, xds, wiring, api, min_drain=0.5, drain_timeout=1.5,
        grace_period=2.5,
    )  # fmt: skip
    result = await long_streams(pod)  # streams end 3 s after deletion
    report = result.report
    assert isinstance(report, TerminationReport)
    assert not report.killed, "the hook's deadline ends it before the kubelet's SIGKILL"
    sidecar = report.containers["shutdown-manager"]
    assert sidecar.hook_exit == 3, "the hook says the deadline passed"
    outcome = pod.drain_outcome()
    assert outcome["outcome"] == "timed_out"
    assert outcome["connections"] == 3
    assert "3 connections left" in str(outcome["message"])


def test_grace_period_default_fits_the_drain_timeout() -> None:
    from bench.lab.envoy_pod import DRAIN_TIMEOUT

    assert MIN_DRAIN < DRAIN_TIMEOUT < GRACE_PERIOD
