"""A dead, missing, hung or lying admin API never means waiting for SIGKILL."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from bench.lab.clients import http_client
from bench.lab.envoy import Envoy
from shutdown_manager.address import parse_admin_address
from shutdown_manager.admin import AdminClient
from shutdown_manager.drain import DrainEngine, DrainReport, Outcome
from shutdown_manager.policy import DrainPolicy
from tests.harness.fake_admin import GarbageStatsAdmin, HungAdmin

pytestmark = pytest.mark.timeout(60)


async def drain_at(socket: Path, timeout: float = 0.3, **policy: Any) -> DrainReport:
    async with AdminClient(parse_admin_address(f"unix://{socket}"), timeout=timeout) as admin:
        return await DrainEngine(admin, DrainPolicy(**policy)).run()


async def test_missing_admin_socket_ends_at_once_with_envoy_gone(workdir: Path) -> None:
    started = time.monotonic()
    report = await drain_at(workdir / "absent.sock", min_drain_duration=5, drain_timeout=20)
    assert report.outcome is Outcome.ENVOY_GONE
    assert time.monotonic() - started < 5, "no waiting for the minimum when Envoy is gone"


async def test_stale_socket_of_a_dead_envoy_ends_with_envoy_gone(envoy: Envoy) -> None:
    envoy.kill()
    assert envoy.admin_socket.exists(), "a killed Envoy leaves its socket file behind"
    report = await drain_at(envoy.admin_socket, min_drain_duration=5, drain_timeout=20)
    assert report.outcome is Outcome.ENVOY_GONE


async def test_hung_admin_is_bounded_by_the_deadline(workdir: Path) -> None:
    hung = await HungAdmin(workdir / "hung.sock").start()
    try:
        started = time.monotonic()
        report = await drain_at(hung.path, timeout=0.3, min_drain_duration=0.2, drain_timeout=2)
    finally:
        await hung.stop()
    assert report.outcome is Outcome.TIMED_OUT
    assert report.connections_left is None
    assert time.monotonic() - started < 2 * 3, "bounded by the deadline, not hung with it"


@pytest.mark.parametrize(
    "garbage",
    [
        b"not json",
        {"stats": "nope"},
        {"stats": [{"name": "listener.x.downstream_cx_active", "value": -1}]},
        [],
    ],
)
async def test_garbage_stats_without_listener_ports_is_bounded_by_the_deadline(
    workdir: Path, garbage: Any
) -> None:
    fake = await GarbageStatsAdmin(workdir / "garbage.sock", garbage).start()
    try:
        report = await drain_at(fake.path, min_drain_duration=0.1, drain_timeout=1)
    finally:
        await fake.stop()
    assert report.outcome is Outcome.TIMED_OUT


async def test_garbage_stats_fall_back_to_counting_envoys_sockets(
    envoy: Envoy, workdir: Path
) -> None:
    """The fake reports the real Envoy's listener ports; the kernel's table counts its
    real connections: one idle client holds the drain until it leaves."""
    fake = await GarbageStatsAdmin(workdir / "garbage.sock", b"\x00junk", dict(envoy.ports)).start()
    try:
        async with http_client() as client:
            assert (await client.get(envoy.url())).status_code == 200
            drainer = asyncio.create_task(
                drain_at(fake.path, min_drain_duration=0.2, drain_timeout=20, quiet_period=0)
            )
            await asyncio.sleep(1.0)
            assert not drainer.done(), "the kernel sees the client's connection"
        report = await asyncio.wait_for(drainer, 5)
    finally:
        await fake.stop()
    assert report.outcome is Outcome.DRAINED


async def test_garbage_stats_and_no_listening_socket_mean_envoy_gone(
    envoy: Envoy, workdir: Path
) -> None:
    ports = dict(envoy.ports)
    envoy.kill()
    fake = await GarbageStatsAdmin(workdir / "garbage.sock", b"junk", ports).start()
    try:
        report = await drain_at(fake.path, min_drain_duration=0.2, drain_timeout=20)
    finally:
        await fake.stop()
    assert report.outcome is Outcome.ENVOY_GONE
