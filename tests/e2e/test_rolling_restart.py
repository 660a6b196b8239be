"""Roll three Envoy "nodes" one after another behind a real HAProxy, under continuous load.

HAProxy health-checks each node's probe listener (`/ready`, proxied to Envoy's admin API):
the drain fails Envoy's health check, HAProxy takes the node out, the pod ends, a new pod
takes its place on the same address, and HAProxy brings it back. No request may fail.
The sidecar is native, as deployed by default (the classic wiring drains each pod the same
way: tests/e2e/test_pod_termination.py runs every client scenario with both).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.lab.backend import Backend
from bench.lab.envoy_pod import EnvoyPod, Wiring, envoy_pod
from bench.lab.haproxy import HAProxy, roll
from bench.lab.pod import TerminationReport
from bench.lab.xds import XdsServer, serve_one_backend
from tests.harness.fake_kube_api import FakeKubeApi

pytestmark = pytest.mark.timeout(120)

NODES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
MIN_DRAIN = 1.0
"""Well above HAProxy's detection time (one failed check, 100 ms apart)."""


async def test_rolling_restart_behind_haproxy_fails_no_request(
    workdir: Path, backend: Backend, pods: list[EnvoyPod], api: FakeKubeApi
) -> None:
    wiring: Wiring = "native"
    nodes: dict[str, EnvoyPod] = {}
    servers: dict[str, XdsServer] = {}
    for index, address in enumerate(NODES):
        name = f"n{index}"
        servers[name] = await serve_one_backend(workdir / f"xds-{name}", backend.port, address)
        pod = envoy_pod(
            workdir, backend.port, address=address, min_drain=MIN_DRAIN, name=name,
            xds=servers[name], wiring=wiring, kube=api,
        )  # fmt: skip
        pods.append(pod)
        nodes[name] = await pod.start()
    proxy = HAProxy(
        workdir,
        {
            name: (pod.envoy.address, pod.envoy.ports["ingress_http"], pod.envoy.ports["probe"])
            for name, pod in nodes.items()
        },
    )

    async def replace(name: str) -> TerminationReport:
        old = nodes[name]
        report = await old.pod.delete()
        new = envoy_pod(
            workdir / f"{name}-next", backend.port, address=old.envoy.address,
            min_drain=MIN_DRAIN, name=name, ports=old.envoy.ports, xds=servers[name],
            wiring=wiring, kube=api,
        )  # fmt: skip
        pods.append(new)
        nodes[name] = await new.start()
        return report

    try:
        await proxy.start()
        tally, reports = await roll(proxy, list(nodes), replace, pause=0.005)
    finally:
        proxy.stop()
        for server in servers.values():
            server.stop()
    assert tally.failed == 0, tally.errors[:5]
    assert tally.ok > 300
    for report in reports:
        assert not report.killed
        assert report.containers["shutdown-manager"].hook_result == "ok"
