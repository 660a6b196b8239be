"""A real Prometheus (Debian's package) scraping a real shutdown-manager sidecar, xds-server
and Envoy, with our rules loaded: every dashboard query and every alert's series return
data through a drain and a certificate rotation, a healthy run fires no alert, and a drain
cut by its deadline fires EnvoyDrainEndedByDeadline."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import yaml

from bench.lab.backend import Backend
from bench.lab.certs import init_certs
from bench.lab.clients import TcpConnection
from bench.lab.envoy import Envoy
from bench.lab.envoy_pod import envoy_pod
from bench.lab.prometheus import Prometheus, Target, binary, now, pod_targets
from bench.lab.sidecar import SidecarProcess, run_hook
from bench.lab.wait import until
from bench.lab.xds import serve_one_backend
from envoy_lifecycle.monitoring.alerts import ALERTS, rules_file
from envoy_lifecycle.monitoring.catalog import names_in
from envoy_lifecycle.monitoring.dashboards import queries
from xds_server.certs.rotation import Rotator

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(binary() is None, reason="prometheus missing: `make setup` installs it"),
]
POD = {"namespace": "shop", "pod": "envoy-0"}


def rules(workdir: Path) -> Path:
    path = workdir / "rules.yaml"
    path.write_text(yaml.safe_dump(rules_file(), sort_keys=False))
    return path


async def test_every_panel_and_alert_reads_live_series_and_a_healthy_run_fires_none(
    tmp_path: Path,
) -> None:
    backend = await Backend().start()
    certs = init_certs(tmp_path / "certs")
    xds = await serve_one_backend(tmp_path / "xds", backend.port, certs_dir=certs.root)
    pod = envoy_pod(tmp_path, backend.port, xds=xds, min_drain=1, drain_timeout=8, grace_period=12)
    prometheus: Prometheus | None = None
    try:
        await pod.start()
        targets = pod_targets(pod.sidecar_port, pod.envoy.ports["probe"], xds.http_port, "envoy-0")
        prometheus = await Prometheus(tmp_path / "prometheus", targets, rules(tmp_path)).start()
        began = now()
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            for _ in range(20):
                assert (await client.get(pod.url("/"))).status_code == 200
        await asyncio.to_thread(Rotator(certs, propagation_delay=1).step, True)
        await asyncio.sleep(3)  # a few scrapes of the rotated state
        report = await pod.delete()
        assert not report.killed, report
        await asyncio.sleep(2)
        end = now()
        for expr in queries():
            assert await prometheus.query_range(expr, began, end), f"no data for panel query {expr}"
        for alert in ALERTS:
            for name in names_in(alert.expr):
                found = await prometheus.query_range(f'{{__name__="{name}"}}', began, end)
                assert found, f"{alert.name}: no series {name}"
        assert not await prometheus.firing(), "a healthy run fired alerts"
        fired = await prometheus.query_range('ALERTS{alertstate="firing"}', began, end)
        assert not fired, fired
    finally:
        if prometheus is not None:
            prometheus.stop()
        pod.pod.kill()
        xds.stop()
        await backend.stop()


async def test_a_drain_cut_by_its_deadline_fires_its_alert(
    tmp_path: Path, envoy: Envoy, sidecars: list[SidecarProcess]
) -> None:
    sidecar = SidecarProcess(
        tmp_path, envoy.admin_address, "--min-drain-duration", "0.5s", "--drain-timeout", "2s",
        "--ignore-listener", "probe",
    )  # fmt: skip
    sidecars.append(sidecar)
    await sidecar.start()
    prometheus = await Prometheus(
        tmp_path / "prometheus",
        [Target("sidecar", f"127.0.0.1:{sidecar.port}", "/metrics", POD)],
        rules(tmp_path),
    ).start()
    held = TcpConnection(envoy.ports["tcp_passthrough"])
    try:
        await held.open()
        await asyncio.sleep(2)  # the counter seen at 0 first: increase() needs two samples
        _, output = await run_hook("--control-socket", str(sidecar.control_socket))
        assert "drain timed_out" in output, output
        await until(
            lambda: _fired(prometheus, "EnvoyDrainEndedByDeadline"), 30, "the deadline alert"
        )
    finally:
        await held.close()
        prometheus.stop()


async def _fired(prometheus: Prometheus, name: str) -> bool:
    return name in await prometheus.firing()
