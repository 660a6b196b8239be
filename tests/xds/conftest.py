"""Fixtures for the xDS suite: backends, the server and Envoys, stopped by PID afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
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
def processes() -> Iterator[list[XdsServer | XdsEnvoy]]:
    started: list[XdsServer | XdsEnvoy] = []
    yield started
    for process in reversed(started):
        process.stop()
