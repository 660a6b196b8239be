"""A misbehaving API server (the FAKE one, tests/harness/fake_kube_api.py, read by the real
`kubernetes` client) is asked at a bounded rate, its bad items are refused alone, and a
source that stops is reported and started again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import pytest

from bench.lab.wait import until
from bench.lab.xds import endpoint_slice, ingress, rule, service, write_manifests
from tests.harness.fake_kube_api import FakeKubeApi
from xds_server.app import ControlPlane, ServeConfig
from xds_server.sources.api import KINDS, KubernetesSource
from xds_server.sources.objects import Loaded
from xds_server.translate.listeners import EnvoyPorts

pytestmark = pytest.mark.timeout(60)
WINDOW = 3.0
"""Seconds of misbehaviour watched: a hot loop asks hundreds of times in it."""
BOUND = 20
"""Requests per kind in WINDOW at most: the backoff's waits (0.2 s doubling, jittered)
allow about five; a hot loop makes hundreds."""


@pytest.fixture
async def loads(api: FakeKubeApi, tmp_path: Path) -> AsyncIterator[AsyncGenerator[Loaded, None]]:
    for obj in (
        service("a", [("http", 80)]),
        endpoint_slice("a", "http", 9000, ["127.0.0.1"]),
        ingress("i", [rule(None, ("/", "Prefix", "a", 80))]),
    ):
        api.apply(obj)
    source = KubernetesSource(api.kubeconfig(tmp_path))
    generator = source.watch()
    await asyncio.wait_for(anext(generator), 10)  # every kind listed and watched
    yield generator
    await generator.aclose()


def asked(api: FakeKubeApi, kind: str) -> int:
    return sum(1 for r in api.requests if r.kind == kind)


async def requests_in_window(api: FakeKubeApi) -> dict[str, int]:
    """Requests per kind during WINDOW seconds from now (a busy machine only lowers them)."""
    before = {kind.kind: asked(api, kind.kind) for kind in KINDS}
    api.drop_watches()
    await asyncio.sleep(WINDOW)
    return {kind: asked(api, kind) - count for kind, count in before.items()}


@pytest.mark.parametrize("misbehaviour", ["watches_end_at_once", "always_gone"])
async def test_watches_that_end_at_once_or_410_are_asked_again_with_a_backoff(
    misbehaviour: str, api: FakeKubeApi, loads: AsyncGenerator[Loaded, None]
) -> None:
    setattr(api, misbehaviour, True)
    counts = await requests_in_window(api)
    assert max(counts.values()) <= BOUND, counts
    if misbehaviour == "always_gone":
        assert api.lists("Ingress") >= 2, "a 410 lists again"


async def test_retry_after_is_honoured(
    api: FakeKubeApi, loads: AsyncGenerator[Loaded, None]
) -> None:
    api.throttled = 2.0  # each kind: one request now, the next 2 s later at the earliest
    counts = await requests_in_window(api)
    assert max(counts.values()) <= 2, counts


async def test_a_list_item_that_is_not_an_object_is_refused_alone(
    api: FakeKubeApi, loads: AsyncGenerator[Loaded, None]
) -> None:
    api.junk_items["Ingress"] = [42, "not an object"]
    api.compact()
    api.drop_watches()  # every kind lists again, the Ingress list with its junk
    loaded = await asyncio.wait_for(anext(loads), 10)
    while not loaded.errors:
        loaded = await asyncio.wait_for(anext(loads), 10)
    assert sorted(loaded.errors) == [
        "api:Ingress list item 1: expected an object, got 42",
        "api:Ingress list item 2: expected an object, got 'not an object'",
    ], loaded.errors
    assert "Ingress/i" in {f"{o.kind}/{o.name}" for o in loaded.objects}
    api.apply(ingress("j", [rule("j.example", ("/", "Prefix", "a", 80))]))
    while "j" not in {o.name for o in loaded.objects if o.kind == "Ingress"}:
        loaded = await asyncio.wait_for(anext(loads), 10)  # the source still follows


async def test_a_source_that_stops_is_reported_and_started_again(
    manifests: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_manifests(
        manifests,
        "app",
        [
            service("a", [("http", 80)]),
            endpoint_slice("a", "http", 9000, ["127.0.0.1"]),
            ingress("i", [rule("a.example", ("/", "Prefix", "a", 80))]),
        ],
    )
    config = ServeConfig(manifests, "127.0.0.1", 0, "127.0.0.1", 0, EnvoyPorts(), None, None)
    plane = ControlPlane(config)
    await plane.startup()
    real_watch, calls = plane.source.watch, []

    async def breaks_once() -> AsyncIterator[Loaded]:
        calls.append(1)
        async for loaded in real_watch():
            yield loaded
            if len(calls) == 1:
                raise KeyError("a bug nobody foresaw")

    plane.source.watch = breaks_once  # type: ignore[method-assign]
    feeder = asyncio.create_task(plane._feed())
    try:
        await until(lambda: len(calls) == 2, what="the source started again")
        assert "source_restarts_total 1.0" in plane.metrics.render().decode()
        assert any("the source stopped; restarting it" in r.getMessage() for r in caplog.records)
        write_manifests(
            manifests, "later", [ingress("j", [rule("b.example", ("/", "Prefix", "a", 80))])]
        )
        await until(lambda: "b.example" in plane.pipeline.state.model.hosts, what="b published")
        assert plane.source_stopped is None, "cleared once it yields again"
    finally:
        feeder.cancel()
        await plane.shutdown()
