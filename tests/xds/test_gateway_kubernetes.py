"""`xds-server serve --kubernetes` with the Gateway API, against a FAKE API server
(tests/harness/fake_kube_api.py, which bumps `metadata.generation` on spec changes as the
real one does): the leader writes each object's status to the API with transition times,
only when it changed, keeping what other controllers wrote; a cluster without the Gateway
API's CRDs still serves its Ingresses."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bench.lab.gateway_api import (
    CLASS,
    CONTROLLER,
    GROUP,
    INFRA,
    gateway,
    listener,
    namespace,
    parent,
    route,
    rule,
    to,
)
from bench.lab.wait import until
from bench.lab.xds import XdsServer, endpoint_slice, ingress, service
from tests.harness.fake_kube_api import FakeKubeApi

pytestmark = pytest.mark.timeout(60)
FOREIGN = {
    "parentRef": {"name": "theirs", "namespace": INFRA},
    "controllerName": "example.com/another-controller",
    "conditions": [
        {
            "type": "Accepted",
            "status": "True",
            "reason": "Accepted",
            "message": "",
            "observedGeneration": 1,
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
    ],
}


def leader(workdir: Path, api: FakeKubeApi) -> XdsServer:
    return XdsServer(
        workdir, None, "--kubeconfig", str(api.kubeconfig(workdir)), "--identity", "r1",
        "--kube-namespace", "edge", "--status-address", "10.1.2.3",
    )  # fmt: skip


def objects() -> list[dict[str, Any]]:
    web = route("web", [parent("edge-gateway"), parent("theirs")], [rule(to("web"))])
    web["metadata"].pop("generation")  # the API server sets it
    web["status"] = {"parents": [FOREIGN]}
    edge = gateway("edge-gateway", listener("http", 8080))
    edge["metadata"].pop("generation")
    return [
        {
            "apiVersion": f"{GROUP}/v1",
            "kind": "GatewayClass",
            "metadata": {"name": CLASS},
            "spec": {"controllerName": CONTROLLER},
        },
        namespace(INFRA),
        edge,
        web,
        service("web", [("http", 8080)], namespace=INFRA),
        endpoint_slice("web", "http", 9000, ["127.0.0.1"], namespace=INFRA),
    ]


def route_status(api: FakeKubeApi) -> dict[str, Any]:
    found: dict[str, Any] = api.objects["HTTPRoute"][(INFRA, "web")].get("status") or {}
    return found


def ours(status: dict[str, Any]) -> dict[str, Any]:
    (mine,) = [p for p in status.get("parents", []) if p["controllerName"] == CONTROLLER]
    found: dict[str, Any] = mine
    return found


async def test_the_leader_writes_gateway_api_status_once_per_change(
    api: FakeKubeApi, workdir: Path, processes: list[Any]
) -> None:
    for obj in objects():
        api.apply(obj)
    processes.append(await leader(workdir, api).start())

    def written() -> bool:
        kinds = {kind for kind, _, _ in api.gateway_status_patches}
        route_done = route_status(api).get("parents", [None])[-1] not in (None, FOREIGN)
        return route_done and kinds == {"Gateway", "GatewayClass", "HTTPRoute"}

    await until(written, timeout=20, what="the three statuses written")
    status = route_status(api)
    assert status["parents"][0] == FOREIGN, "another controller's entry is kept as it was"
    accepted = {c["type"]: c for c in ours(status)["conditions"]}["Accepted"]
    assert (accepted["status"], accepted["observedGeneration"]) == ("True", 1)
    assert accepted["lastTransitionTime"].endswith("Z")
    gateway_status = api.objects["Gateway"][(INFRA, "edge-gateway")]["status"]
    assert gateway_status["listeners"][0]["attachedRoutes"] == 1
    assert all("lastTransitionTime" in c for c in gateway_status["conditions"])
    class_status = api.objects["GatewayClass"][("default", CLASS)]["status"]
    assert class_status["conditions"][0]["type"] == "Accepted"
    await asyncio.sleep(1.5)  # a window in which a write loop would show
    kinds = sorted(kind for kind, _, _ in api.gateway_status_patches)
    assert kinds == ["Gateway", "GatewayClass", "HTTPRoute"], "each written once, no loop"

    # A spec change: the API bumps the generation; the leader writes it, keeping the time
    # of conditions whose status did not change.
    changed = api.objects["HTTPRoute"][(INFRA, "web")]
    api.apply({**changed, "spec": {**changed["spec"], "hostnames": ["web.example.com"]}})

    async def observed_two() -> bool:
        conditions = ours(route_status(api))["conditions"]
        return all(c["observedGeneration"] == 2 for c in conditions)

    await until(observed_two, timeout=10)
    again = {c["type"]: c for c in ours(route_status(api))["conditions"]}["Accepted"]
    assert again["lastTransitionTime"] == accepted["lastTransitionTime"]
    assert route_status(api)["parents"][0] == FOREIGN


async def test_a_cluster_without_the_gateway_api_serves_its_ingresses(
    api: FakeKubeApi, workdir: Path, processes: list[Any]
) -> None:
    api.missing = {"GatewayClass", "Gateway", "HTTPRoute", "ReferenceGrant"}
    for obj in (
        service("a", [("http", 80)]),
        endpoint_slice("a", "http", 9000, ["127.0.0.1"]),
        ingress("one", [{"host": "one.example", "http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "a", "port": {"number": 80}}}}]}}]),
    ):  # fmt: skip
        api.apply(obj)
    server = await leader(workdir, api).start()
    processes.append(server)

    async def status_written() -> bool:
        obj = api.objects["Ingress"][("default", "one")]
        return bool((obj.get("status") or {}).get("loadBalancer"))

    await until(status_written, timeout=20)
    assert "HTTPRoute" not in str(await server.status())


async def test_conditions_of_other_owners_are_kept(
    api: FakeKubeApi, workdir: Path, processes: list[Any]
) -> None:
    """GatewayPreserveForeignConditions: a condition type someone else set on the Gateway
    and on its listener survives the leader's next write (after a generation bump)."""
    for obj in objects():
        api.apply(obj)
    processes.append(await leader(workdir, api).start())
    key = (INFRA, "edge-gateway")

    async def written() -> bool:
        return bool(api.objects["Gateway"][key].get("status", {}).get("listeners"))

    await until(written, timeout=20)
    seeded = {"type": "example.com/Stale", "status": "True", "reason": "Seeded", "message": "",
              "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"}  # fmt: skip
    current = api.objects["Gateway"][key]
    status = current["status"]
    status["conditions"].append(seeded)
    status["listeners"][0]["conditions"].append(seeded)
    api.apply(current)
    listeners = current["spec"]["listeners"]
    api.apply({**current, "spec": {**current["spec"],
               "listeners": [{**listeners[0], "hostname": "second.example.com"}]}})  # fmt: skip

    async def caught_up() -> bool:
        conditions = api.objects["Gateway"][key]["status"]["conditions"]
        return all(c["observedGeneration"] == 2 for c in conditions if c["type"] != seeded["type"])

    await until(caught_up, timeout=10)
    status = api.objects["Gateway"][key]["status"]
    assert seeded in status["conditions"]
    assert seeded in status["listeners"][0]["conditions"]
