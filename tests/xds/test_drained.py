"""`GET /drained?ip=`: answers once no proxy sends the address new requests (drained.py),
against a real xds-server and a real Envoy; the address's endpoint changed as a deletion
changes it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.lab.xds import XdsEnvoy, XdsServer, ingress, rule, service, write_manifests
from xds_server.drained import taking_requests
from xds_server.model.types import Backend, Endpoint, Model

pytestmark = pytest.mark.timeout(60)


def test_an_address_takes_requests_until_it_is_draining_or_gone() -> None:
    model = Model(
        clusters={
            "a": Backend((Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80, draining=True))),
            "b": Backend((Endpoint("10.0.0.2", 81, draining=True),)),
        }
    )
    assert taking_requests(model, {"10.0.0.1", "10.0.0.2", "10.0.0.3"}) == {"10.0.0.1"}
    assert taking_requests(None, {"10.0.0.2"}) == {"10.0.0.2"}, "nothing served yet: unknown"


def pods(**conditions: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "shop-1",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "shop"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [
            {"addresses": [ip.replace("_", ".")], "conditions": c} for ip, c in conditions.items()
        ],
    }


TERMINATING = {"ready": False, "serving": True, "terminating": True}


async def test_drained_answers_once_every_proxy_has_the_pod_draining(tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    app = [service("shop", [("http", 80)]), ingress("s", [rule(None, ("/", "Prefix", "shop", 80))])]
    write_manifests(manifests, "app", app)
    write_manifests(manifests, "slice", [pods(**{"10_0_0_1": {}, "10_0_0_2": {}})])
    server = await XdsServer(tmp_path, manifests).start()
    envoys: list[XdsEnvoy] = []
    try:
        envoys = [await XdsEnvoy(tmp_path, server, f"e{n}").start() for n in range(2)]
        url = f"http://127.0.0.1:{server.http_port}/drained"
        async with httpx.AsyncClient(trust_env=False, timeout=20) as client:
            held = await client.get(url, params={"ip": "10.0.0.2", "timeout": "0.5"})
            assert held.status_code == 504, held.text
            assert held.json()["taking_requests"] == ["10.0.0.2"]
            waiting = asyncio.create_task(client.get(url, params={"ip": "10.0.0.2"}))
            await asyncio.sleep(0.3)
            assert not waiting.done(), "answered while the pod was still taking requests"
            write_manifests(manifests, "slice", [pods(**{"10_0_0_1": {}, "10_0_0_2": TERMINATING})])
            answer = await waiting
            assert answer.status_code == 200, answer.text
            for envoy in envoys:  # by then each Envoy has the pod DRAINING
                async with envoy.admin() as admin:
                    clusters = (await admin.get("/clusters", params={"format": "json"})).json()
                (shop,) = [
                    c for c in clusters["cluster_statuses"] if c["name"].endswith("shop/http")
                ]
                health = {
                    h["address"]["socket_address"]["address"]: h["health_status"]
                    for h in shop["host_statuses"]
                }
                assert health["10.0.0.2"].get("eds_health_status") == "DRAINING", health
    finally:
        for envoy in envoys:
            envoy.stop()
        server.stop()


BAD = [
    ("", "name the pod's address"),
    ("?ip=10.0.0.x", "is not an IP address"),
    ("?ip=10.0.0.1&timeout=-1", "seconds, 0 to 300"),
    ("?ip=10.0.0.1&timeout=soon", "seconds, 0 to 300"),
]


async def test_a_bad_query_is_a_400_in_one_line(tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_manifests(manifests, "app", [service("shop", [("http", 80)])])
    server = await XdsServer(tmp_path, manifests).start()
    try:
        for query, says in BAD:
            answer = await server.get(f"/drained{query}")
            assert answer.status_code == 400, query
            assert says in answer.text, query
            assert answer.text.count("\n") == 1, query
    finally:
        server.stop()
