"""The control plane driving a real Envoy 1.40 over ADS: routing, changes, NACKs, restarts."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.lab.backend import Backend
from bench.lab.clients import Tally
from bench.lab.wait import until
from bench.lab.xds import (
    XdsEnvoy,
    XdsServer,
    app,
    endpoint_slice,
    ingress,
    ingress_class,
    rule,
    service,
    who,
    write_manifests,
)

pytestmark = pytest.mark.timeout(90)


async def start(
    processes: list[Any], workdir: Path, manifests: Path, sotw: bool = False, node: str = "n1"
) -> tuple[XdsServer, XdsEnvoy]:
    server = await XdsServer(workdir, manifests).start()
    processes.append(server)
    envoy = XdsEnvoy(workdir, server, node, sotw=sotw)
    processes.append(envoy)
    return server, await envoy.start()


@pytest.mark.parametrize("sotw", [False, True], ids=["delta", "sotw"])
async def test_every_ingress_feature_routes_through_envoy(
    sotw: bool, workdir: Path, manifests: Path, backends: dict[str, Backend], processes: list[Any]
) -> None:
    write_manifests(
        manifests,
        "app",
        [
            *app(backends),
            ingress(
                "exact-host",
                [
                    rule(
                        "foo.example.com",
                        ("/api", "Prefix", "a", 80),
                        ("/api/v2", "Exact", "b", "http"),
                        ("/", "Prefix", "c", 80),
                    )
                ],
            ),
            ingress("wildcard", [rule("*.example.com", ("/", "Prefix", "d", "http"))]),
            ingress(
                "fallback", [], defaultBackend={"service": {"name": "c", "port": {"number": 80}}}
            ),
        ],
    )
    _, envoy = await start(processes, workdir, manifests, sotw=sotw)
    expected = {
        ("foo.example.com", "/api"): "a",
        ("foo.example.com", "/api/x"): "a",  # Prefix is element-wise...
        ("foo.example.com", "/apix"): "c",  # ...so /apix is not under /api
        ("foo.example.com", "/api/v2"): "b",  # Exact beats the shorter Prefix
        ("foo.example.com", "/api/v2/x"): "a",
        ("foo.example.com", "/"): "c",
        ("bar.example.com", "/anything"): "d",  # wildcard host
        ("FOO.example.com:8080", "/api"): "a",  # case and port do not matter
        ("other.org", "/x"): "c",  # defaultBackend
    }
    for (host, path), backend in expected.items():
        assert await who(envoy, host, path) == backend, (host, path)


async def test_not_ready_endpoints_get_no_traffic(
    workdir: Path, manifests: Path, backends: dict[str, Backend], processes: list[Any]
) -> None:
    write_manifests(
        manifests,
        "app",
        [
            service("a", [("http", 80)]),
            endpoint_slice("a", "http", backends["a"].port, ["127.0.0.1"], ready=False),
            ingress("i", [rule(None, ("/", "Prefix", "a", 80))]),
        ],
    )
    _, envoy = await start(processes, workdir, manifests)
    assert await who(envoy, "x", "/") == "503"


async def test_changes_reach_envoy_with_zero_failed_requests(
    workdir: Path, manifests: Path, backends: dict[str, Backend], processes: list[Any]
) -> None:
    base = app(backends)
    write_manifests(manifests, "app", [*base, ingress("i", [rule(None, ("/", "Prefix", "a", 80))])])
    _, envoy = await start(processes, workdir, manifests)
    stop, tally, seen = asyncio.Event(), Tally(), set()

    async def load() -> None:
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            while not stop.is_set():
                try:
                    response = await client.get(envoy.url("/"))
                    tally.record(response)
                    seen.add(response.text)
                except httpx.HTTPError as exc:
                    tally.fail(exc)

    clients = [asyncio.create_task(load()) for _ in range(3)]
    steps = [  # add a route, change the backend, add another, remove it
        [rule(None, ("/", "Prefix", "a", 80), ("/b", "Prefix", "b", 80))],
        [rule(None, ("/", "Prefix", "c", 80), ("/b", "Prefix", "b", 80))],
        [rule(None, ("/", "Prefix", "d", 80))],
    ]
    for rules in steps:
        await asyncio.sleep(0.4)
        write_manifests(manifests, "app", [*base, ingress("i", rules)])
        target = rules[0]["http"]["paths"][0]["backend"]["service"]["name"]
        await until(lambda t=target: _serves(envoy, t))
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*clients)
    assert tally.failed == 0, tally.errors[:5]
    assert {"a", "c", "d"} <= seen


async def _serves(envoy: XdsEnvoy, backend: str) -> bool:
    return await who(envoy, "x", "/") == backend


async def _metric(server: XdsServer, pattern: str, at_least: float) -> bool:
    match = re.search(pattern + r" ([0-9.e+]+)", await server.metrics())
    return match is not None and float(match.group(1)) >= at_least


async def _metric_is(server: XdsServer, name: str, value: float) -> bool:
    match = re.search(re.escape(name) + r" ([0-9.e+]+)", await server.metrics())
    return (float(match.group(1)) if match else 0.0) == value


@pytest.mark.parametrize("sotw", [False, True], ids=["delta", "sotw"])
async def test_server_restart_resyncs_without_listener_drains(
    sotw: bool, workdir: Path, manifests: Path, backends: dict[str, Backend], processes: list[Any]
) -> None:
    two = [("/", "Prefix", "a", 80), ("/b", "Prefix", "b", 80)]
    write_manifests(manifests, "app", [*app(backends), ingress("i", [rule(None, *two)])])
    server, envoy = await start(processes, workdir, manifests, sotw=sotw)
    before = await envoy.stats(
        r"^listener_manager\.(listener_modified|listener_removed|total_filter_chains_draining)$"
    )
    server.stop()
    assert await who(envoy, "x", "/") == "a", "Envoy serves while the server is away"
    restarted = XdsServer(workdir, manifests)
    restarted.grpc_port, restarted.http_port = server.grpc_port, server.http_port
    restarted.envoy_http_port = server.envoy_http_port
    restarted.args = server.args
    processes.append(await restarted.start())
    await until(lambda: _metric(restarted, r"xds_connected_proxies", 1))
    await asyncio.sleep(0.5)
    after = await envoy.stats(
        r"^listener_manager\.(listener_modified|listener_removed|total_filter_chains_draining)$"
    )
    assert after == before, "same content, same versions: nothing rebuilt or drained"
    for kind in ("Listener", "Cluster", "RouteConfiguration", "ClusterLoadAssignment"):
        assert await _metric_is(restarted, f'xds_resources_sent_total{{type="{kind}"}}', 0), kind
    assert await who(envoy, "x", "/") == "a"
    # The restarted server still moves traffic between clusters the proxy already had.
    swapped = [("/", "Prefix", "b", 80), ("/b", "Prefix", "a", 80)]
    write_manifests(manifests, "app", [*app(backends), ingress("i", [rule(None, *swapped)])])
    await until(lambda: _serves(envoy, "b"))


async def test_two_envoys_one_sotw_one_delta_follow_the_same_change(
    workdir: Path, manifests: Path, backends: dict[str, Backend], processes: list[Any]
) -> None:
    write_manifests(
        manifests, "app", [*app(backends), ingress("i", [rule(None, ("/", "Prefix", "a", 80))])]
    )
    server, delta = await start(processes, workdir, manifests)
    sotw = XdsEnvoy(workdir, server, "n2", sotw=True)
    processes.append(sotw)
    await sotw.start()
    write_manifests(
        manifests, "app", [*app(backends), ingress("i", [rule(None, ("/", "Prefix", "b", 80))])]
    )
    # Both bind the ingress port (SO_REUSEPORT, Envoy's default on Linux), so the kernel splits
    # traffic between them: check what each one has, through its own admin API.
    for envoy in (delta, sotw):
        await until(lambda e=envoy: _routes_to(e, "default/b/http"))
    await until(lambda: _serves(delta, "b"))


async def _routes_to(envoy: XdsEnvoy, cluster: str) -> bool:
    async with envoy.admin() as admin:
        dump = (await admin.get("/config_dump", params={"resource": "dynamic_route_configs"})).text
    return f'"cluster": "{cluster}"' in dump


async def test_only_our_ingress_class_is_served(
    workdir: Path, manifests: Path, backends: dict[str, Backend], processes: list[Any]
) -> None:
    ours = ingress_class("envoy", default=True)

    def host(name: str, backend: str) -> list[dict[str, Any]]:
        return [rule(f"{name}.example.com", ("/", "Prefix", backend, 80))]

    write_manifests(manifests, "app", [
        *app(backends), ours,
        ingress("named", host("n", "a"), ingressClassName="envoy"),
        ingress("other", host("o", "b"), ingressClassName="nginx"),
        ingress("classless", host("c", "c")),
    ])  # fmt: skip
    server = await XdsServer(workdir, manifests, "--ingress-class", "envoy").start()
    processes.append(server)
    envoy = XdsEnvoy(workdir, server, "class-node")
    processes.append(envoy)
    await envoy.start()
    assert await who(envoy, "n.example.com", "/") == "a"
    assert await who(envoy, "c.example.com", "/") == "c", "the default class takes class-less"
    assert await who(envoy, "o.example.com", "/") == "404", "another controller's Ingress"
