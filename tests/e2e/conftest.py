"""Fixtures for the local e2e suite: pods of real processes, always stopped by PID."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.envoy_pod import EnvoyPod


@pytest.fixture
def pods(workdir: Path) -> Iterator[list[EnvoyPod]]:
    started: list[EnvoyPod] = []
    yield started
    for pod in started:
        pod.pod.kill()
