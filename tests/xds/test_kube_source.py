"""`xds-server serve --kubernetes`: the real `kubernetes` client against a FAKE API server
(tests/harness/fake_kube_api.py) that speaks list/watch as the real one does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

from bench.lab.backend import Backend
from bench.lab.wait import until
from bench.lab.xds import (
    XdsEnvoy,
    XdsServer,
    app,
    endpoint_slice,
    ingress,
    rule,
    service,
    who,
)
from tests.harness.fake_kube_api import FakeKubeApi
from xds_server.sources.api import KubernetesSource
from xds_server.sources.objects import Loaded

pytestmark = pytest.mark.timeout(60)
KINDS = ("Ingress", "IngressClass", "Service", "EndpointSlice", "Secret")


def names(loaded: Loaded) -> set[str]:
    return {f"{o.kind}/{o.name}" for o in loaded.objects}


def cluster(api: FakeKubeApi, objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        api.apply(obj)


async def next_load(loads: AsyncGenerator[Loaded, None]) -> Loaded:
    return await asyncio.wait_for(anext(loads), 10)


async def test_list_then_watch_resume_bookmarks_and_relist_on_410(
    api: FakeKubeApi, tmp_path: Path
) -> None:
    cluster(
        api,
        [
            service("a", [("http", 80)]),
            endpoint_slice("a", "http", 9000, ["127.0.0.1"]),
            ingress("i", [rule(None, ("/", "Prefix", "a", 80))]),
        ],
    )
    api.apply(
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
         "metadata": {"name": "password", "namespace": "default"}, "data": {}}
    )  # fmt: skip
    source = KubernetesSource(api.kubeconfig(tmp_path))
    loads = source.watch()
    try:
        first = await next_load(loads)  # only once every kind is listed
        assert names(first) == {"Service/a", "EndpointSlice/a-a", "Ingress/i"}
        secret_requests = [r for r in api.requests if r.kind == "Secret"]
        assert {r.field_selector for r in secret_requests} == {"type=kubernetes.io/tls"}

        # A change arrives over the watch.
        api.apply(ingress("j", [rule("j.example", ("/", "Prefix", "a", 80))]))
        assert "Ingress/j" in names(await next_load(loads))

        # A dropped connection resumes from the last version seen, without listing again.
        seen = str(api.version)
        api.drop_watches(abrupt=True)
        await until(lambda: _watching_from(api, "Ingress", seen))
        assert api.lists("Ingress") == 1
        for kind in KINDS:  # every watch is back before the bookmark is sent
            await until(lambda k=kind: _watches(api, k, 2))

        # A bookmark moves the version on; the next watch starts from it.
        api.bookmark()
        marked = str(api.version)
        api.drop_watches()  # after the bookmark on each watch's stream: it is seen first
        await until(lambda: _watching_from(api, "Service", marked))

        # Compaction: 410 Gone, a new list, and the same objects (nothing to push).
        before = names(await _load_now(source))
        api.compact()
        api.drop_watches()
        await until(lambda: _listed(api, "Ingress", 2))
        api.delete("Ingress", "j")
        assert names(await next_load(loads)) == before - {"Ingress/j"}
    finally:
        await loads.aclose()


async def _load_now(source: KubernetesSource) -> Loaded:
    return source.load()


async def _watching_from(api: FakeKubeApi, kind: str, version: str) -> bool:
    return any(r.kind == kind and r.watch and r.resource_version == version for r in api.requests)


async def _watches(api: FakeKubeApi, kind: str, times: int) -> bool:
    return sum(1 for r in api.requests if r.kind == kind and r.watch) >= times


async def _listed(api: FakeKubeApi, kind: str, times: int) -> bool:
    return api.lists(kind) >= times


async def test_envoy_follows_the_api(
    api: FakeKubeApi, workdir: Path, backends: dict[str, Backend], processes: list[Any]
) -> None:
    cluster(api, [*app(backends, "ab"), ingress("i", [rule(None, ("/", "Prefix", "a", 80))])])
    kubeconfig = api.kubeconfig(workdir)
    server = XdsServer(workdir, None, "--kubeconfig", str(kubeconfig))
    processes.append(await server.start())
    envoy = XdsEnvoy(workdir, server, "kube")
    processes.append(await envoy.start())
    assert await who(envoy, "any", "/") == "a"
    api.apply(ingress("i", [rule(None, ("/", "Prefix", "b", 80))]))
    await until(lambda: _serves(envoy, "b"))
    snapshots = _snapshots(await server.metrics())
    api.compact()
    api.drop_watches(abrupt=True)  # every kind lists again and finds nothing new
    await until(lambda: _listed(api, "EndpointSlice", 2))
    await asyncio.sleep(0.3)
    assert _snapshots(await server.metrics()) == snapshots


async def _serves(envoy: XdsEnvoy, backend: str) -> bool:
    return await who(envoy, "any", "/") == backend


def _snapshots(metrics: str) -> float:
    line = next(x for x in metrics.splitlines() if x.startswith("xds_snapshots_total "))
    return float(line.split()[1])
