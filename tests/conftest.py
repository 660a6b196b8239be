"""Fixtures that start real processes and always stop them by PID."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bench.lab.backend import Backend
from bench.lab.envoy import Envoy
from bench.lab.sidecar import SidecarProcess
from tests.harness.fake_kube_api import FakeKubeApi


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short directory (unix socket paths are limited to ~107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="sm-", dir="/tmp") as name:
        yield Path(name)


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    server = await Backend().start()
    yield server
    await server.stop()


@pytest.fixture
async def api() -> AsyncIterator[FakeKubeApi]:
    """The FAKE Kubernetes API server (no real one can run here)."""
    fake = await FakeKubeApi().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def envoy(workdir: Path, backend: Backend) -> AsyncIterator[Envoy]:
    proxy = Envoy(workdir=workdir / "envoy", backend_port=backend.port)
    try:
        await proxy.start()
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def sidecars(workdir: Path) -> Iterator[list[SidecarProcess]]:
    """Collects every sidecar a test starts, and stops them all by PID afterwards."""
    started: list[SidecarProcess] = []
    yield started
    for sidecar in started:
        sidecar.kill()


def pytest_configure(config: pytest.Config) -> None:
    os.environ.pop("POD_NAME", None)
    os.environ.pop("POD_NAMESPACE", None)
