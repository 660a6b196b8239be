"""Services and their EndpointSlices -> upstreams: what a backend reference resolves to,
whichever route kind names it.

A Service port is named by number (the Service's `port`) or by name; its endpoints are the
*ready* addresses of the EndpointSlices labelled `kubernetes.io/service-name`, at the slice
port of the same name (kube-proxy reads the `ready` condition the same way).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from xds_server.model.types import Endpoint, Rejected, Upstream
from xds_server.sources.objects import KubeObject

SERVICE_NAME_LABEL = "kubernetes.io/service-name"

Resolved = dict[tuple[str, str, str], tuple[Upstream, list[Endpoint]]]
"""Backends already resolved in one build, by (namespace, service, port)."""


def slices_by_service(slices: list[KubeObject]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    found: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for obj in slices:
        labels = obj.body.get("metadata", {}).get("labels") or {}
        service = labels.get(SERVICE_NAME_LABEL)
        if service:
            found[(obj.namespace, service)].append(obj.body)
    return found


def resolve_backend(
    namespace: str,
    backend: Any,
    services: dict[tuple[str, str], KubeObject],
    slices: dict[tuple[str, str], list[dict[str, Any]]],
    where: str,
    resolved: Resolved,
) -> tuple[Upstream, list[Endpoint]]:
    service = (backend or {}).get("service") if isinstance(backend, dict) else None
    if not isinstance(service, dict) or not service.get("name"):
        raise Rejected(f"{where}.backend needs service.name (resource backends are not supported)")
    name = str(service["name"])
    port = service.get("port") or {}
    key = (namespace, name, repr(sorted(port.items())) if isinstance(port, dict) else "")
    if key in resolved:  # the same Service port, already resolved in this build
        return resolved[key]
    svc = services.get((namespace, name))
    if svc is None:
        raise Rejected(f"{where}: Service {namespace}/{name} not found")
    port_name = _service_port_name(svc, port, where)
    upstream = Upstream(namespace, name, port_name)
    found = upstream, _ready_endpoints(slices.get((namespace, name), []), svc, port_name)
    resolved[key] = found
    return found


def _service_port_name(svc: KubeObject, port: dict[str, Any], where: str) -> str:
    ports = (svc.body.get("spec") or {}).get("ports") or []
    for entry in ports:
        if "number" in port and entry.get("port") == port["number"]:
            return str(entry.get("name") or entry["port"])
        if "name" in port and entry.get("name") == port["name"]:
            return str(port["name"])
    wanted = port.get("number", port.get("name"))
    raise Rejected(f"{where}: Service {svc.namespace}/{svc.name} has no port {wanted!r}")


def _ready_endpoints(
    slices: list[dict[str, Any]], svc: KubeObject, port_name: str
) -> list[Endpoint]:
    """Ready addresses at the slice port named like the Service port ("" when unnamed)."""
    named = {
        str(p.get("name") or p.get("port")): p
        for p in (svc.body.get("spec") or {}).get("ports") or []
    }
    slice_port_name = named[port_name].get("name") or ""
    found: set[Endpoint] = set()
    for body in slices:
        if body.get("addressType") == "FQDN":
            continue  # names, not addresses: kube-proxy skips these slices too
        numbers = [
            p.get("port")
            for p in body.get("ports") or []
            if (p.get("name") or "") == slice_port_name
        ]
        if not numbers or not isinstance(numbers[0], int):
            continue
        for endpoint in body.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            for address in endpoint.get("addresses") or []:
                found.add(Endpoint(str(address), numbers[0]))
    return sorted(found)
