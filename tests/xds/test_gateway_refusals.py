"""What Envoy would refuse in an HTTPRoute is traced to that route, through a real Envoy: the
route is left out and says so in its status (Accepted False), and a fresh Envoy gets every
other route, those of the same hostname included. Nothing is ever NACKed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.lab.backend import Backend
from bench.lab.envoy import free_port
from bench.lab.wait import until
from bench.lab.xds import XdsEnvoy, XdsServer, app, gateway_objects, who, write_manifests

pytestmark = pytest.mark.timeout(90)
GROUP = "gateway.networking.k8s.io"


def http_route(
    name: str, host: str, path: str, *filters: dict[str, Any], kind: str = "PathPrefix"
) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "matches": [{"path": {"type": kind, "value": path}}],
        "backendRefs": [{"name": "a", "port": 80}],
    }
    if filters:
        rule["filters"] = list(filters)
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"parentRefs": [{"name": "edge"}], "hostnames": [host], "rules": [rule]},
    }


def headers(**edits: Any) -> dict[str, Any]:
    return {"type": "RequestHeaderModifier", "requestHeaderModifier": edits}


REFUSED = {
    "sets-host": headers(set=[{"name": "Host", "value": "evil.example"}]),
    "line-break": headers(add=[{"name": "X-Note", "value": "ends with a line break\n"}]),
}
"""Within the API's schema, refused by Envoy: each would have been NACKed, hostname and all."""


async def test_a_route_envoy_would_refuse_is_left_out_alone(
    workdir: Path, manifests: Path, backends: dict[str, Backend], processes: list[Any]
) -> None:
    server = XdsServer(workdir, manifests, envoy_address="127.0.0.1")
    server.serving_port = free_port("127.0.0.1")
    server.serving_listener = f"gateway_127.0.0.1_{server.serving_port}"
    routes = [http_route("good", "shared.example", "/ok")]
    routes += [
        http_route(name, "shared.example", f"/{name}", edit) for name, edit in REFUSED.items()
    ]
    routes.append(  # RE2 has no lookahead: Envoy refuses it, Python's engine does not
        http_route("lookahead", "shared.example", "/(?=lookahead)", kind="RegularExpression")
    )
    write_manifests(manifests, "app", [*app(backends, "a"), *gateway_objects(server.serving_port),
                                       *routes])  # fmt: skip
    processes.append(await server.start())
    envoy = XdsEnvoy(workdir, server, "fresh")
    processes.append(await envoy.start())

    await until(lambda: _routes(envoy, "/ok", "a"), timeout=20, what="the good route served")
    for name in REFUSED:
        assert await who(envoy, "shared.example", f"/{name}") == "404", name
    status = await server.status()
    for name in [*REFUSED, "lookahead"]:
        (parent,) = status[f"HTTPRoute/default/{name}"]["parents"]
        accepted = parent["conditions"][0]
        assert (accepted["status"], accepted["reason"]) == ("False", "UnsupportedValue"), name
        assert "Envoy would refuse" in accepted["message"], accepted
    rejected = " ".join(status["rejected"])
    assert all(f"HTTPRoute default/{name}" in rejected for name in REFUSED), rejected
    assert "NACK" not in server.log(), "nothing Envoy refuses was ever sent"
    ready = (await server.get("/readyz")).json()
    assert ready["ready"] is True


async def _routes(envoy: XdsEnvoy, path: str, backend: str) -> bool:
    return await who(envoy, "shared.example", path) == backend
