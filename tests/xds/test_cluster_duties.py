"""Two replicas against a FAKE API server (tests/harness/fake_kube_api.py): one leader by
Lease writes the Ingress status and renews the certificate Secrets; when it stops, the other
takes over."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from bench.lab.certs import certs_cli
from bench.lab.wait import until
from bench.lab.xds import (
    XdsServer,
    endpoint_slice,
    ingress,
    rule,
    service,
)
from tests.harness.fake_kube_api import FakeKubeApi

pytestmark = pytest.mark.timeout(90)
ADDRESS = [{"ip": "10.1.2.3"}]


def replica(workdir: Path, api: FakeKubeApi, name: str) -> XdsServer:
    return XdsServer(
        workdir / name, None,
        "--kubeconfig", str(api.kubeconfig(workdir)), "--identity", name,
        "--kube-namespace", "edge", "--status-address", "10.1.2.3",
        "--rotate", "--propagation-delay", "1s",
    )  # fmt: skip


async def leading(server: XdsServer) -> bool:
    return "xds_leader 1.0" in await server.metrics()


async def test_one_leader_writes_status_and_renews_secrets_and_another_takes_over(
    api: FakeKubeApi, workdir: Path, processes: list[Any]
) -> None:
    kubeconfig = str(api.kubeconfig(workdir))
    init = await asyncio.to_thread(
        certs_cli, "init", "--kube-namespace", "edge", "--kubeconfig", kubeconfig,
        "--leaf-lifetime", "9s",
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    for obj in (
        service("a", [("http", 80)]),
        endpoint_slice("a", "http", 9000, ["127.0.0.1"]),
        ingress("one", [rule("one.example", ("/", "Prefix", "a", 80))]),
        ingress("two", [rule("two.example", ("/", "Prefix", "a", 80))]),
    ):
        api.apply(obj)
    (workdir / "r1").mkdir()
    (workdir / "r2").mkdir()
    first, second = replica(workdir, api, "r1"), replica(workdir, api, "r2")
    processes += [await first.start(), await second.start()]

    await until(lambda: _any_leader(first, second), timeout=15)
    leader, follower = (first, second) if await leading(first) else (second, first)
    assert not await leading(follower)
    await until(lambda: _status_is(api, "one", ADDRESS))
    await until(lambda: _status_is(api, "two", ADDRESS))
    envoy_version = api.objects["Secret"][("edge", "envoy-tls")]["metadata"]["resourceVersion"]
    await asyncio.sleep(1.0)
    assert len(api.status_patches) == 2, "each status written once: no loop through the watch"

    # The leader renews the 9 s leaves at two thirds of their life (in the Secrets).
    await until(lambda: _renewed(api, envoy_version), timeout=15)

    # SIGTERM gives the lease up; the other replica leads and writes the next status.
    assert leader.proc is not None
    leader.proc.send_signal(signal.SIGTERM)
    await asyncio.to_thread(leader.proc.wait, 15)  # the fake API answers from this loop
    released = api.objects["Lease"][("edge", "xds-server")]["spec"]
    assert released.get("holderIdentity") != leader.args[leader.args.index("--identity") + 1], (
        "the leader gave its Lease up on its way out (not left to expire)"
    )
    await until(lambda: leading(follower), timeout=15)
    api.apply(ingress("three", [rule("three.example", ("/", "Prefix", "a", 80))]))
    await until(lambda: _status_is(api, "three", ADDRESS))
    lease = api.objects["Lease"][("edge", "xds-server")]
    assert lease["spec"]["holderIdentity"] == follower.args[follower.args.index("--identity") + 1]


async def _any_leader(*servers: XdsServer) -> bool:
    return any([await leading(server) for server in servers])


async def _status_is(api: FakeKubeApi, name: str, wanted: list[dict[str, str]]) -> bool:
    obj = api.objects["Ingress"][("default", name)]
    return bool((obj.get("status") or {}).get("loadBalancer", {}).get("ingress") == wanted)


async def _renewed(api: FakeKubeApi, version: str) -> bool:
    secret = api.objects["Secret"][("edge", "envoy-tls")]
    return bool(secret["metadata"]["resourceVersion"] != version)
