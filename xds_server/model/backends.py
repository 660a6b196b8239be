"""Services and their EndpointSlices -> upstreams: what a backend reference resolves to,
whichever route kind names it.

A Service port is named by number (the Service's `port`) or by name; its endpoints are the
addresses of the EndpointSlices labelled `kubernetes.io/service-name`, at the slice port of
the same name, read as kube-proxy reads their conditions (DESIGN.md §8):

* `ready` (nil means ready): takes new requests;
* not ready but `serving` and `terminating` (a pod being deleted that still passes its
  readiness probe): DRAINING, so Envoy sends it nothing new while what it has finishes;
  and when the port has no ready endpoint at all, these take new requests (KEP-1669's
  fallback: a single-replica Deployment keeps serving while its pod is replaced);
* anything else: left out.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from xds_server.model.backend_policy import policy_of
from xds_server.model.types import Backend, BackendPolicy, Endpoint, Rejected, Upstream
from xds_server.sources.objects import KubeObject

SERVICE_NAME_LABEL = "kubernetes.io/service-name"

Resolved = dict[tuple[str, str, str], tuple[Upstream, Backend]]
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
) -> tuple[Upstream, Backend]:
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
    spec_port = _named_ports(svc)[port_name]
    try:
        policy = policy_of(svc.body, spec_port)
    except Rejected as exc:
        raise Rejected(f"{where}: Service {namespace}/{name}: {exc}") from None
    upstream = Upstream(namespace, name, port_name, policy)
    found = upstream, _backend(slices.get((namespace, name), []), spec_port, policy)
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


def _named_ports(svc: KubeObject) -> dict[str, dict[str, Any]]:
    return {
        str(p.get("name") or p.get("port")): p
        for p in (svc.body.get("spec") or {}).get("ports") or []
    }


TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"


def _backend(
    slices: list[dict[str, Any]], spec_port: dict[str, Any], policy: BackendPolicy
) -> Backend:
    """The endpoints at the slice port named like the Service port ("" when unnamed)."""
    slice_port_name = spec_port.get("name") or ""
    ready: set[Endpoint] = set()
    draining: set[Endpoint] = set()
    triggered: list[float] = []
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
        stamp = _trigger_time(body)
        if stamp is not None:
            triggered.append(stamp)
        for endpoint in body.get("endpoints") or []:
            state = condition_of(endpoint.get("conditions"))
            target = ready if state == READY else draining if state == DRAINING else None
            if target is not None:
                target.update(Endpoint(str(a), numbers[0]) for a in endpoint.get("addresses") or [])
    draining -= ready  # an address ready in one slice is ready
    fallback = not ready and bool(draining)
    endpoints = (
        draining if fallback else ready | {Endpoint(e.address, e.port, True) for e in draining}
    )
    return Backend(tuple(sorted(endpoints)), policy, fallback, max(triggered, default=None))


READY, DRAINING, OUT = "ready", "draining", "out"


def condition_of(conditions: Any) -> str:
    """An endpoint's conditions as Envoy should treat it (`ready` nil: ready; `serving` nil:
    as `ready`; `terminating` nil: not terminating)."""
    if not isinstance(conditions, dict):
        conditions = {}
    ready = conditions.get("ready") is not False
    serving = ready if conditions.get("serving") is None else conditions["serving"] is not False
    if ready:
        return READY
    if serving and conditions.get("terminating") is True:
        return DRAINING
    return OUT


def _trigger_time(body: dict[str, Any]) -> float | None:
    """The slice's last-change-trigger-time (RFC 3339, seconds) as a Unix time, if any."""
    text = ((body.get("metadata") or {}).get("annotations") or {}).get(TRIGGER_TIME)
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
