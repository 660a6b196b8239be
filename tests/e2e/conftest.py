"""Fixtures for the local e2e suite: pods of real processes, always stopped by PID."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.e2e.envoy_pod import EnvoyPod
from tests.harness.backend import Backend
from tests.harness.xds import XdsServer, endpoint_slice, ingress, rule, service, write_manifests


@pytest.fixture
def pods(workdir: Path) -> Iterator[list[EnvoyPod]]:
    started: list[EnvoyPod] = []
    yield started
    for pod in started:
        pod.pod.kill()


@pytest.fixture
async def xds(workdir: Path, backend: Backend) -> AsyncIterator[XdsServer]:
    """An xDS server routing every path of every host to the backend."""
    manifests = workdir / "manifests"
    manifests.mkdir()
    write_manifests(manifests, "app", [
        service("backend", [("http", 80)]),
        endpoint_slice("backend", "http", backend.port, ["127.0.0.1"]),
        ingress("all", [rule(None, ("/", "Prefix", "backend", 80))]),
    ])  # fmt: skip
    server = await XdsServer(workdir, manifests).start()
    yield server
    server.stop()
