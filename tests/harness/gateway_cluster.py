"""One Gateway API cluster (bench/lab/gateway_api.py) per test module, shared by its tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from bench.lab.gateway_api import Conformance

Objects = Callable[[Conformance], list[dict[str, Any]]]


def gateway_cluster(objects: Objects) -> Any:
    """A module-scoped `conformance` fixture: the cluster with the module's base objects."""

    @pytest_asyncio.fixture(scope="module", loop_scope="module")
    async def conformance(
        tmp_path_factory: pytest.TempPathFactory,
    ) -> AsyncIterator[Conformance]:
        cluster = Conformance(tmp_path_factory.mktemp("gateway"), objects)
        try:
            yield await cluster.start()
        finally:
            await cluster.stop()

    return conformance
