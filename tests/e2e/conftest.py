"""Fixtures for the local e2e suite: pods of real processes, always stopped by PID."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bench.lab.backend import Backend
from bench.lab.envoy_pod import EnvoyPod
from bench.lab.xds import XdsServer, serve_one_backend


@pytest.fixture
def pods(workdir: Path) -> Iterator[list[EnvoyPod]]:
    started: list[EnvoyPod] = []
    yield started
    for pod in started:
        pod.pod.kill()


@pytest.fixture
async def xds(workdir: Path, backend: Backend) -> AsyncIterator[XdsServer]:
    """An xDS server routing every path of every host to the backend."""
    server = await serve_one_backend(workdir / "xds", backend.port)
    yield server
    server.stop()
