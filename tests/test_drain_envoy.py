"""The drain engine against a real Envoy 1.40: each kind of client holds it and is counted."""

from __future__ import annotations

import asyncio
import time

import pytest

from bench.lab.clients import (
    Tally,
    TcpConnection,
    http_client,
    steady_load,
    streaming_request,
)
from bench.lab.envoy import Envoy
from bench.lab.h2client import h2_load
from bench.lab.wait import until
from shutdown_manager.address import parse_admin_address
from shutdown_manager.admin import AdminClient
from shutdown_manager.drain import DrainEngine, DrainEvent, DrainReport, Outcome
from shutdown_manager.policy import DrainPolicy

pytestmark = pytest.mark.timeout(60)


async def drain(
    envoy: Envoy, events: list[DrainEvent] | None = None, **policy: object
) -> DrainReport:
    settings: dict[str, object] = {"ignore_listeners": ("probe",)} | policy
    async with AdminClient(parse_admin_address(envoy.admin_address)) as admin:
        sink = events if events is not None else []
        engine = DrainEngine(admin, DrainPolicy(**settings), [sink.append])  # type: ignore[arg-type]
        return await engine.run()


async def count_now(envoy: Envoy) -> int | None:
    """What the engine counts right now, without draining."""
    async with AdminClient(parse_admin_address(envoy.admin_address)) as admin:
        engine = DrainEngine(admin, DrainPolicy(ignore_listeners=("probe",)))
        return (await engine.read()).connections


async def _draining(envoy: Envoy) -> bool:
    return await envoy.state() == "DRAINING"


async def _counted(envoy: Envoy, connections: int) -> bool:
    return await count_now(envoy) == connections


def peak_connections(events: list[DrainEvent]) -> int:
    return max((e.connections or 0) for e in events)


async def test_no_connections_releases_right_after_the_minimum(envoy: Envoy) -> None:
    report = await drain(envoy, min_drain_duration=1.0, drain_timeout=10)
    assert report.outcome is Outcome.DRAINED
    assert report.connections_left == 0
    assert report.duration >= 1.0, "never before the minimum"
    assert report.duration < 10 / 2, "right after it, not at the deadline"
    assert await envoy.state() == "DRAINING"


async def test_busy_keepalive_clients_are_counted_and_never_fail(envoy: Envoy) -> None:
    """Requests always in flight: Envoy closes each connection after its response, the
    clients reconnect, and the drain is held until they stop. Each request lasts 3 s and the
    drain starts once all four are in flight, so they hold it past the check however slow the
    machine (short requests left instants with every client between two connections)."""
    stop, tally, events = asyncio.Event(), Tally(), list[DrainEvent]()
    url = envoy.url("/slow?s=3")
    load = [asyncio.create_task(steady_load(url, stop, tally, pause=0)) for _ in range(4)]
    await until(lambda: _counted(envoy, 4), what="all four requests in flight")
    drainer = asyncio.create_task(
        drain(envoy, events, min_drain_duration=1.0, drain_timeout=20, quiet_period=0)
    )
    await asyncio.sleep(2.0)
    assert not drainer.done(), "busy clients must hold the drain"
    stop.set()
    await asyncio.gather(*load)
    report = await drainer
    assert report.outcome is Outcome.DRAINED
    assert peak_connections(events) >= 1
    assert tally.failed == 0, tally.errors
    assert tally.closes >= 1, "draining Envoy should have asked the clients to close"


async def test_idle_keepalive_client_holds_until_quiet_period_then_releases(envoy: Envoy) -> None:
    async with http_client() as client:
        assert (await client.get(envoy.url())).status_code == 200
        events: list[DrainEvent] = []
        report = await drain(
            envoy, events, min_drain_duration=0.5, drain_timeout=10, quiet_period=1.0
        )
        assert report.outcome is Outcome.QUIESCENT
        assert report.connections_left == 1
        assert peak_connections(events) == 1


async def test_idle_client_without_quiet_release_times_out_and_says_how_many(envoy: Envoy) -> None:
    async with http_client() as client:
        assert (await client.get(envoy.url())).status_code == 200
        report = await drain(envoy, min_drain_duration=0.2, drain_timeout=1.5, quiet_period=0)
        assert report.outcome is Outcome.TIMED_OUT
        assert report.connections_left == 1
        assert report.outcome.exit_code == 3


async def test_idle_client_sending_again_mid_drain_is_served_and_closed(envoy: Envoy) -> None:
    async with http_client() as client:
        assert (await client.get(envoy.url())).status_code == 200
        drainer = asyncio.create_task(
            drain(envoy, min_drain_duration=1.0, drain_timeout=20, quiet_period=0)
        )
        await until(lambda: _draining(envoy), what="the drain's failed health check")
        response = await client.get(envoy.url())
        assert response.status_code == 200
        assert response.headers["connection"] == "close"
        report = await drainer
    assert report.outcome is Outcome.DRAINED


async def test_http2_multiplexed_client_is_counted_and_never_fails(envoy: Envoy) -> None:
    stop, tally = asyncio.Event(), Tally()
    load = asyncio.create_task(h2_load(envoy.url(), stop, tally, streams=8, connections=2))
    await until(lambda: _counted(envoy, 2), what="both HTTP/2 connections counted")
    drainer = asyncio.create_task(
        drain(envoy, min_drain_duration=1.0, drain_timeout=20, quiet_period=0)
    )
    await until(lambda: tally.opened > 2, timeout=20, what="a connection opened after GOAWAY")
    stop.set()
    opened = await load
    report = await drainer
    assert report.outcome is Outcome.DRAINED
    assert tally.failed == 0, tally.errors
    assert tally.ok > 0
    assert opened > 2, "GOAWAY made the client move to new connections"


async def test_long_streaming_response_holds_the_drain_until_it_ends(envoy: Envoy) -> None:
    tally = Tally()
    stream = asyncio.create_task(streaming_request(envoy.url("/stream?n=6&d=0.5"), tally))
    await until(lambda: _counted(envoy, 1), what="the stream's connection")
    report = await drain(envoy, min_drain_duration=0.5, drain_timeout=20)
    ended = await stream
    assert tally.failed == 0, tally.errors
    assert tally.ok == 1
    assert report.outcome is Outcome.DRAINED
    assert time.monotonic() - ended < report.duration, "released only after the stream ended"


async def test_tcp_proxy_connection_is_counted_and_blocks_quiet_release(envoy: Envoy) -> None:
    tunnel = await TcpConnection(envoy.ports["tcp_passthrough"]).open()
    try:
        assert await tunnel.request()
        events: list[DrainEvent] = []
        drainer = asyncio.create_task(
            drain(envoy, events, min_drain_duration=0.3, drain_timeout=20, quiet_period=0.3)
        )
        await asyncio.sleep(1.5)
        assert not drainer.done(), "an open TCP-proxy connection must hold the drain"
        assert peak_connections(events) == 1
        assert await tunnel.request(), "the tunnel still works mid-drain"
    finally:
        await tunnel.close()
    report = await drainer
    assert report.outcome is Outcome.DRAINED


async def test_ignored_listener_is_not_counted(envoy: Envoy) -> None:
    async with http_client() as client:
        probe = f"http://127.0.0.1:{envoy.ports['probe']}/ready"
        assert (await client.get(probe)).status_code == 200
        report = await drain(envoy, min_drain_duration=0.2, drain_timeout=5, quiet_period=0)
    assert report.outcome is Outcome.DRAINED


async def test_probe_listener_counts_when_not_ignored(envoy: Envoy) -> None:
    async with http_client() as client:
        probe = f"http://127.0.0.1:{envoy.ports['probe']}/ready"
        assert (await client.get(probe)).status_code == 200
        report = await drain(
            envoy, ignore_listeners=(), min_drain_duration=0.2, drain_timeout=1.0, quiet_period=0
        )
    assert report.outcome is Outcome.TIMED_OUT
    assert report.connections_left == 1


async def test_envoy_killed_mid_drain_ends_with_envoy_gone(envoy: Envoy) -> None:
    async with http_client() as client:
        assert (await client.get(envoy.url())).status_code == 200
        drainer = asyncio.create_task(
            drain(envoy, min_drain_duration=0.2, drain_timeout=30, quiet_period=0)
        )
        await until(lambda: _draining(envoy), what="the drain's failed health check")
        envoy.kill()
        report = await asyncio.wait_for(drainer, 5)
    assert report.outcome is Outcome.ENVOY_GONE
    assert report.outcome.exit_code == 4


async def test_admin_request_rate_stays_within_ten_per_second(envoy: Envoy) -> None:
    async with http_client() as client:
        assert (await client.get(envoy.url())).status_code == 200
        report = await drain(envoy, min_drain_duration=0.2, drain_timeout=2.0, quiet_period=0)
    assert report.outcome is Outcome.TIMED_OUT
    polls = report.admin_requests - 2  # the trigger and the listener lookup
    assert polls <= 10 * report.duration + 1
