"""The ADS server with many synthetic proxies over real gRPC, in process."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from envoy.config.route.v3 import route_pb2

from bench.lab.ads_client import SyntheticProxy
from bench.lab.wait import until
from bench.lab.xds import XdsServer, endpoint_slice, ingress, rule, service, write_manifests
from xds_server.app import ControlPlane, ServeConfig
from xds_server.sources.directory import DirectorySource
from xds_server.sources.watch import BURST_GAP
from xds_server.translate.listeners import EnvoyPorts
from xds_server.translate.type_urls import ROUTE, ROUTE_VHDS, VHOST
from xds_server.xds.cache import versions_digest
from xds_server.xds.order import PUSH_ORDER

pytestmark = pytest.mark.timeout(90)


def many_routes(count: int, backend: str = "a") -> list[dict[str, Any]]:
    paths = [(f"/r{n}", "Prefix", backend, 80) for n in range(count)]
    return [
        service("a", [("http", 80)]),
        endpoint_slice("a", "http", 9000, ["127.0.0.1"]),
        service("b", [("http", 80)]),
        endpoint_slice("b", "http", 9001, ["127.0.0.1"]),
        ingress("many", [rule("example.com", *paths)]),
    ]


@pytest.fixture
async def plane(manifests: Path) -> AsyncIterator[ControlPlane]:
    config = ServeConfig(manifests, "127.0.0.1", 0, "127.0.0.1", 0, EnvoyPorts(), None, None)
    control = ControlPlane(config)
    await control.startup()
    feeder = asyncio.create_task(control._feed())
    yield control
    feeder.cancel()
    await control.shutdown()


def route_version(plane: ControlPlane) -> str:
    """What a delta proxy has once it holds every current virtual host of the route
    configurations its listeners name (these manifests have no TLS: `ingress_http` alone)."""
    entries = plane.store.current.entries(VHOST)
    return versions_digest(
        {name: e.version for name, e in entries.items() if name.startswith("ingress_http/")}
    )


async def changed(plane: ControlPlane, serial: int) -> None:
    await asyncio.wait_for(plane.store.wait_after(serial), 10)


async def test_a_stuck_proxy_never_delays_the_others(manifests: Path, plane: ControlPlane) -> None:
    write_manifests(manifests, "app", many_routes(3000))
    await changed(plane, 0)
    address = f"127.0.0.1:{plane.grpc_port}"
    stuck = await SyntheticProxy(address, "stuck", stuck=True).start()
    proxies = [await SyntheticProxy(address, f"p{n}").start() for n in range(30)]
    try:
        first = route_version(plane)
        assert all([await p.has_route_version(first, 20) for p in proxies])
        serial = plane.store.current.serial
        write_manifests(manifests, "app", many_routes(3000, backend="b"))
        await changed(plane, serial)
        second = route_version(plane)
        assert second != first
        assert all([await p.has_route_version(second, 10) for p in proxies])
        assert "xds_connected_proxies 31.0" in plane.metrics.render().decode()
    finally:
        for proxy in [stuck, *proxies]:
            await proxy.stop()


async def test_nothing_is_sent_when_nothing_changed(manifests: Path, plane: ControlPlane) -> None:
    write_manifests(manifests, "app", many_routes(10))
    await changed(plane, 0)
    proxy = await SyntheticProxy(f"127.0.0.1:{plane.grpc_port}", "p").start()
    try:
        assert await proxy.has_route_version(route_version(plane), 10)
        await asyncio.sleep(0.3)
        responses, serial = proxy.responses, plane.store.current.serial
        write_manifests(manifests, "app", many_routes(10))  # same content, new file
        (manifests / "unrelated.yaml").write_text(
            "kind: ConfigMap\napiVersion: v1\nmetadata: {name: x}\n"
        )
        await asyncio.sleep(0.5)
        assert plane.store.current.serial == serial, "no new snapshot for the same content"
        assert proxy.responses == responses, "and nothing sent"
    finally:
        await proxy.stop()


async def test_a_burst_of_changes_is_coalesced_and_the_last_one_wins(
    manifests: Path, plane: ControlPlane
) -> None:
    write_manifests(manifests, "app", many_routes(10))
    await changed(plane, 0)
    proxy = await SyntheticProxy(f"127.0.0.1:{plane.grpc_port}", "p").start()
    try:
        start = plane.store.current.serial
        for count in range(11, 41):  # thirty writes before the source can look once
            write_manifests(manifests, "app", many_routes(count))
        await changed(plane, start)
        routes = plane.store.current.entries(ROUTE)["ingress_http"].decoded()
        assert isinstance(routes, route_pb2.RouteConfiguration)
        unsplit = [r for r in routes.virtual_hosts[0].routes if not r.match.headers]
        assert len(unsplit) == 40, "the last state is the one published"  # (and their twins)
        assert plane.store.current.serial == start + 1, "thirty changes, one snapshot"
        assert await proxy.has_route_version(route_version(plane), 10), "the last state arrives"

        def convergences() -> float:
            metrics = plane.metrics.render().decode()
            measured = re.search(r"^xds_convergence_seconds_count ([0-9.]+)$", metrics, re.M)
            return float(measured.group(1)) if measured else 0.0

        await until(lambda: convergences() >= 1, what="change seen -> all proxies ACKed, measured")
        assert plane.store.current.serial == start + 1, "and nothing after it"
    finally:
        await proxy.stop()


async def test_changes_that_keep_coming_reload_at_most_once_per_gap(manifests: Path) -> None:
    """The debounce in the source's own clock: a slow disk or a busy machine only spaces the
    reloads further apart, so the assertion never depends on how fast the writes were."""
    write_manifests(manifests, "app", many_routes(1))
    source = DirectorySource(manifests)
    loop = asyncio.get_running_loop()
    reloads: list[tuple[float, int]] = []
    last_seen = asyncio.Event()

    async def consume() -> None:
        async for loaded in source.watch():
            ingresses = [o for o in loaded.objects if o.kind == "Ingress"]
            paths = ingresses[0].body["spec"]["rules"][0]["http"]["paths"]
            reloads.append((loop.time(), len(paths)))
            if len(paths) == 30:
                last_seen.set()

    task = asyncio.create_task(consume())
    try:
        for count in range(2, 31):
            write_manifests(manifests, "app", many_routes(count))
            await asyncio.sleep(0)  # the source may look between any two writes
        await asyncio.wait_for(last_seen.wait(), 10)
    finally:
        task.cancel()
    times = [when for when, _ in reloads]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert all(gap >= BURST_GAP * 0.99 for gap in gaps), gaps  # float rounding of loop time
    assert reloads[-1][1] == 30, "the last write wins"


async def test_invalid_files_are_rejected_and_the_last_good_config_stays(
    manifests: Path, plane: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    write_manifests(manifests, "app", many_routes(5))
    await changed(plane, 0)
    good = route_version(plane)
    (manifests / "app.yaml").write_text("apiVersion: v1\nkind: [unclosed\n")
    (manifests / "other.yaml").write_text(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: broken}\nspec: {}\n"
    )

    def errors() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]

    def logged(text: str) -> bool:
        return any(text in e for e in errors())

    await until(lambda: logged("rejected: app.yaml: not valid YAML"), what="app.yaml rejected")
    await until(lambda: logged("other.yaml: Ingress default/broken: has no rules"))
    assert route_version(plane) == good, "the last good objects of app.yaml stay"
    assert all("\n" not in e for e in errors())


async def test_sigterm_stops_accepting_and_exits_within_the_grace(
    workdir: Path, manifests: Path
) -> None:
    write_manifests(manifests, "app", many_routes(5))
    server = await XdsServer(workdir, manifests).start()
    proxy = await SyntheticProxy(f"127.0.0.1:{server.grpc_port}", "p").start()
    try:
        assert server.proc is not None
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            while server.proc.poll() is None:  # noqa: ASYNC110 - a child process
                await asyncio.sleep(0.05)
        assert server.proc.returncode == 0
        assert time.monotonic() - started < 5 + 3
        assert "stopping: no new streams" in server.log()
    finally:
        with contextlib.suppress(Exception):
            await proxy.stop()
        server.stop()


async def test_a_stuck_proxy_is_dropped_with_a_log_line_and_the_others_go_on(
    manifests: Path, plane: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    write_manifests(manifests, "app", many_routes(200))
    await changed(plane, 0)
    plane.servicer.stuck_after = 0.5
    address = f"127.0.0.1:{plane.grpc_port}"
    stuck = await SyntheticProxy(address, "stuck", stuck=True).start()
    proxies = [await SyntheticProxy(address, f"p{n}").start() for n in range(5)]
    try:
        assert all([await p.has_route_version(route_version(plane), 20) for p in proxies])
        await until(lambda: len(plane.servicer.streams) == 5, 20, "the stuck stream dropped")
        assert all(stream.node != "stuck" for stream in plane.servicer.streams)
        assert "dropping the stream of stuck" in caplog.text
        assert "xds_streams_dropped_total 1.0" in plane.metrics.render().decode()
        serial = plane.store.current.serial
        write_manifests(manifests, "app", many_routes(200, backend="b"))
        await changed(plane, serial)
        assert all([await p.has_route_version(route_version(plane), 20) for p in proxies])
    finally:
        for proxy in [stuck, *proxies]:
            await proxy.stop()


async def test_two_replicas_over_the_same_input_agree_and_a_moving_proxy_gets_nothing(
    manifests: Path, plane: ControlPlane
) -> None:
    write_manifests(manifests, "app", many_routes(300))
    await changed(plane, 0)
    config = ServeConfig(manifests, "127.0.0.1", 0, "127.0.0.1", 0, EnvoyPorts(), None, None)
    other = ControlPlane(config)  # a second replica: its own process state, the same input
    await other.startup()
    feeder = asyncio.create_task(other._feed())
    proxy = moved = None
    try:
        await changed(other, 0)
        for type_url in (*PUSH_ORDER, ROUTE_VHDS):
            assert plane.store.current.version(type_url) == other.store.current.version(type_url)
        proxy = await SyntheticProxy(f"127.0.0.1:{plane.grpc_port}", "mover").start()
        assert await proxy.has_route_version(route_version(plane), 20)
        # The proxy moves to the other replica, saying what it has, as Envoy does.
        resume = {t: dict(held) for t, held in proxy.has.items()}
        await proxy.stop()
        address = f"127.0.0.1:{other.grpc_port}"
        moved = await SyntheticProxy(address, "mover", resume=resume).start()
        await until(lambda: moved.responses >= 5, 20, "every type answered")
        await until(
            lambda: all(s.converged(other.store.current) for s in other.servicer.streams),
            20,
            "the moved proxy in step",
        )
        assert moved.resources_received == 0, "it was sent nothing it already had"
        assert moved.routes_version == route_version(other)
    finally:
        for client in (proxy, moved):
            if client is not None:
                await client.stop()
        feeder.cancel()
        await other.shutdown()
