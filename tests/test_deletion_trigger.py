"""What may start a drain: nothing on the pod network alone, in either wiring.

Classic sidecar: only the preStop hook (control socket, mode 0600) and SIGTERM start it.
Native sidecar (`serve --confirm-deletion`): Envoy's preStop GET /shutdown may start it too,
but only once the API server (a FAKE here, tests/harness/fake_kube_api.py, read through the
real kubernetes client) says this very pod is being deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import httpx
import pytest

from bench.lab.envoy import Envoy
from bench.lab.sidecar import SidecarProcess
from bench.lab.wait import until
from shutdown_manager.pod_deletion import INTERVAL
from tests.harness.fake_kube_api import FakeKubeApi

pytestmark = pytest.mark.timeout(60)

NAME, NAMESPACE, UID = "envoy-7d4", "envoy-lifecycle", "0b7f6c1e-uid"
FAST = ("--min-drain-duration", "0.2s", "--drain-timeout", "10s", "--ignore-listener", "probe")
PROBES = 40
"""Requests from the pod network in a flood."""


def pod_env(kubeconfig: Path, uid: str = UID) -> dict[str, str]:
    return {"POD_NAME": NAME, "POD_NAMESPACE": NAMESPACE, "POD_UID": uid,
            "KUBECONFIG": str(kubeconfig)}  # fmt: skip


async def start(
    sidecars: list[SidecarProcess], workdir: Path, envoy: Envoy, *flags: str, **env: str
) -> SidecarProcess:
    sidecar = SidecarProcess(workdir, envoy.admin_address, *FAST, *flags, env=env)
    sidecars.append(sidecar)
    return await sidecar.start()


async def flood(url: str) -> None:
    """What anyone on the pod network can send: every method and path, claims in headers."""
    headers = {"X-Pod-Deleting": "true", "Authorization": "Bearer guess"}
    async with httpx.AsyncClient(trust_env=False, timeout=2.0) as client:

        async def one(method: str, path: str) -> None:
            with contextlib.suppress(httpx.HTTPError):  # /shutdown waits: the client gives up
                await client.request(method, f"{url}{path}", headers=headers)

        calls = [one("GET", "/shutdown") for _ in range(PROBES)]
        calls += [
            one(method, path)
            for method in ("POST", "PUT", "DELETE")
            for path in ("/shutdown", "/drain", "/healthcheck/fail", "/quitquitquit")
        ]
        await asyncio.gather(*calls)


async def status(sidecar: SidecarProcess) -> dict[str, object]:
    async with httpx.AsyncClient(trust_env=False) as client:
        body: dict[str, object] = (await client.get(f"{sidecar.url}/status")).json()
        return body


@pytest.mark.parametrize("wiring", ["classic", "native"])
async def test_no_request_from_the_pod_network_starts_a_drain_of_a_live_pod(
    wiring: str, envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess], api: FakeKubeApi
) -> None:
    api.add_pod(NAME, NAMESPACE, UID)
    flags = ("--confirm-deletion",) if wiring == "native" else ()
    sidecar = await start(sidecars, workdir, envoy, *flags, **pod_env(api.kubeconfig(workdir)))
    loop = asyncio.get_running_loop()
    began = loop.time()
    await flood(sidecar.url)
    await until(lambda: _no_waiter_left(sidecar), what="every /shutdown gone with its caller")
    waited = loop.time() - began
    assert await envoy.state() == "LIVE"
    state = await status(sidecar)
    assert state["phase"] == "idle"
    if wiring == "native":
        # One GET a second at most while anyone waits, shared by all: never one per request.
        # Each count is bounded on its own (read at different instants, they may differ by one
        # GET in flight).
        most = min(PROBES - 1, int(waited / INTERVAL) + 2)
        check = state["deletion_check"]
        assert isinstance(check, dict)
        assert check["verdict"] == "not being deleted"
        assert 1 <= check["asked"] <= most, (check, waited)
        assert 1 <= api.gets("Pod") <= most, (api.gets("Pod"), waited)


async def _no_waiter_left(sidecar: SidecarProcess) -> bool:
    return (await status(sidecar))["shutdown_waiters"] == 0


async def _phase_is(sidecar: SidecarProcess, phase: str) -> bool:
    return (await status(sidecar))["phase"] == phase


async def _live(envoy: Envoy) -> bool:
    return await envoy.state() == "LIVE"


async def test_another_pod_of_the_same_name_being_deleted_starts_nothing(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess], api: FakeKubeApi
) -> None:
    """A pod with our name but another uid (the object was replaced) is not this pod."""
    api.add_pod(NAME, NAMESPACE, "another-uid")
    api.start_deleting(NAME, NAMESPACE, grace_period=30)
    env = pod_env(api.kubeconfig(workdir))
    sidecar = await start(sidecars, workdir, envoy, "--confirm-deletion", **env)
    await flood(sidecar.url)
    assert await envoy.state() == "LIVE"
    verdict = (await status(sidecar))["deletion_check"]
    assert "not this pod's" in str(verdict), verdict


async def test_an_unreachable_api_server_starts_nothing(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess], api: FakeKubeApi
) -> None:
    kubeconfig = api.kubeconfig(workdir)
    await api.stop()  # the check fails closed
    sidecar = await start(sidecars, workdir, envoy, "--confirm-deletion", **pod_env(kubeconfig))
    await flood(sidecar.url)
    assert await envoy.state() == "LIVE"
    async with httpx.AsyncClient(trust_env=False) as client:
        metrics = (await client.get(f"{sidecar.url}/metrics")).text
    assert 'shutdown_manager_deletion_checks_total{verdict="error"}' in metrics
    assert 'shutdown_manager_deletion_checks_total{verdict="deleting"} 0.0' in metrics


async def test_a_waiting_shutdown_starts_the_drain_once_the_pod_is_being_deleted(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess], api: FakeKubeApi
) -> None:
    api.add_pod(NAME, NAMESPACE, UID)
    env = pod_env(api.kubeconfig(workdir))
    sidecar = await start(sidecars, workdir, envoy, "--confirm-deletion", **env)
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        waiting = asyncio.create_task(client.get(f"{sidecar.url}/shutdown"))
        await asyncio.sleep(1.5)
        assert not waiting.done()
        assert await envoy.state() == "LIVE"
        api.start_deleting(NAME, NAMESPACE, grace_period=30)
        answer = await asyncio.wait_for(waiting, 10)
    assert answer.status_code == 200
    assert answer.json()["phase"] == "done"
    assert await envoy.state() == "DRAINING"
    lines = [json.loads(x) for x in sidecar.log().splitlines() if x.startswith("{")]
    started = [x for x in lines if str(x["msg"]).startswith("drain requested by")]
    assert len(started) == 1
    assert "API server: deletionTimestamp" in str(started[0]["msg"])


async def test_a_sidecar_restarted_while_its_pod_is_deleted_resumes_the_drain(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess], api: FakeKubeApi
) -> None:
    """Kubernetes 1.34+ restarts a native sidecar that exits during the pod's termination
    (KEP-4438): the new one must not undo the drain by restoring Envoy to LIVE."""
    api.add_pod(NAME, NAMESPACE, UID)
    api.start_deleting(NAME, NAMESPACE, grace_period=30)
    async with envoy.admin_http() as admin:
        await admin.post("/healthcheck/fail")  # the drain the first incarnation started
    env = pod_env(api.kubeconfig(workdir))
    sidecar = await start(sidecars, workdir, envoy, "--confirm-deletion", **env)
    await until(lambda: _phase_is(sidecar, "done"), timeout=20, what="the drain resumed and done")
    assert await envoy.state() == "DRAINING"
    assert "resuming the drain" in sidecar.log()
    assert "restored" not in sidecar.log()


async def test_a_sidecar_restarted_in_a_live_pod_still_restores_envoy(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess], api: FakeKubeApi
) -> None:
    api.add_pod(NAME, NAMESPACE, UID)
    async with envoy.admin_http() as admin:
        await admin.post("/healthcheck/fail")  # a liveness restart's drain, say
    env = pod_env(api.kubeconfig(workdir))
    sidecar = await start(sidecars, workdir, envoy, "--confirm-deletion", **env)
    await until(lambda: _live(envoy), timeout=20, what="Envoy restored to LIVE")
    assert (await status(sidecar))["phase"] == "idle"


async def test_confirm_deletion_without_the_pods_identity_is_a_one_line_error(
    workdir: Path,
) -> None:
    sidecar = SidecarProcess(workdir, "unix:///nonexistent/admin.sock", "--confirm-deletion",
                             env={"POD_NAME": "", "POD_NAMESPACE": ""})  # fmt: skip
    with pytest.raises(RuntimeError, match="serve exited"):
        await sidecar.start(timeout=10)
    assert sidecar.proc is not None
    assert sidecar.proc.returncode == 1
    lines = sidecar.log().strip().splitlines()
    assert lines == [
        "shutdown-manager serve: error: --confirm-deletion needs POD_NAME and POD_NAMESPACE"
        " (downward API)"
    ]


async def test_an_api_outage_holds_a_restore_back_only_for_a_while(
    envoy: Envoy,
    workdir: Path,
    api: FakeKubeApi,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In-process, with the patience cut to 3 s: Envoy found DRAINING stays so while the API
    server cannot answer, then is restored (a pod stuck DRAINING is the worse failure)."""
    from shutdown_manager import server
    from shutdown_manager.address import parse_admin_address
    from shutdown_manager.policy import DrainPolicy

    kubeconfig = api.kubeconfig(workdir)
    await api.stop()
    for key, value in pod_env(kubeconfig).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(server, "API_PATIENCE", 3.0)
    async with envoy.admin_http() as admin:
        await admin.post("/healthcheck/fail")
    config = server.ServeConfig(
        admin=parse_admin_address(envoy.admin_address), listen_host="127.0.0.1", listen_port=0,
        control_socket=workdir / "c.sock", policy=DrainPolicy(), confirm_deletion=True,
    )  # fmt: skip
    sidecar = server.Sidecar(config)
    await sidecar.startup()
    try:
        check = sidecar.deletion
        assert check is not None
        await until(lambda: check.last is not None and check.last.error, what="an API error")
        assert await envoy.state() == "DRAINING", "held while the API server cannot say"
        await until(lambda: _live(envoy), timeout=20, what="Envoy restored after the patience")
        assert sidecar.drain.started_at is None
    finally:
        await sidecar.close()
