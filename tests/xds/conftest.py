"""Fixtures for the xDS suite: backends, the server and Envoys, stopped by PID afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.lab.backend import Backend
from bench.lab.xds import XdsEnvoy, XdsServer


@pytest.fixture
async def backends() -> AsyncIterator[dict[str, Backend]]:
    started = {name: await Backend(name).start() for name in "abcd"}
    yield started
    for backend in started.values():
        await backend.stop()


@pytest.fixture
def manifests(workdir: Path) -> Path:
    path = workdir / "manifests"
    path.mkdir()
    return path


@pytest.fixture
async def processes() -> AsyncIterator[list[XdsServer | XdsEnvoy]]:
    """Stopped off the event loop: a server's SIGTERM releases its Lease through the FAKE
    API server, which answers from this loop (a blocking wait here would hold the release
    until its timeout)."""
    started: list[XdsServer | XdsEnvoy] = []
    yield started
    for process in reversed(started):
        await asyncio.to_thread(process.stop)
