"""A small typed picture of what should be routed where, built from Kubernetes objects.

Ingress semantics as Kubernetes defines them (networking.k8s.io/v1):

* Hosts: exact (`foo.example.com`) or a wildcard of one leading label (`*.example.com`);
  a rule without a host matches every host.
* Paths: `Exact` matches the path exactly; `Prefix` matches element-wise (`/foo` matches
  `/foo` and `/foo/bar`, not `/foobar`; a trailing `/` is ignored); `ImplementationSpecific`
  is treated as `Prefix` (documented choice).
* Precedence: the longest path wins, and `Exact` beats `Prefix` at equal length; exact hosts
  beat wildcards; `spec.defaultBackend` takes what no rule matches.
* Backends: a Service in the Ingress' namespace, its port by number (`port.number`, the
  Service's `port`) or by name; endpoints are read from the EndpointSlices labelled
  `kubernetes.io/service-name`, at the slice port of the same name, by their conditions
  (model/backends.py).
* Classes: `spec.ingressClassName`, else the `kubernetes.io/ingress.class` annotation, else
  the IngressClass marked `ingressclass.kubernetes.io/is-default-class: "true"`.
* TLS: each `spec.tls` entry's hosts are served with its `kubernetes.io/tls` Secret.

An object that cannot be used is rejected with one line naming its source, kind and name;
the rest of the model is built without it.
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from xds_server.model.backends import Resolved, resolve_backend
from xds_server.model.types import (
    EXACT,
    PREFIX,
    Backend,
    Model,
    Rejected,
    Route,
    TlsBinding,
    Upstream,
    describe,
)
from xds_server.sources.objects import KubeObject

DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
LEGACY_CLASS_ANNOTATION = "kubernetes.io/ingress.class"

log = logging.getLogger("xds_server.model")


@dataclass(frozen=True)
class IngressPart:
    """What one Ingress contributes, computed once while it and the Services and
    EndpointSlices it names do not change."""

    by_host: dict[str, list[Route]]
    """Its routes per host (`*`: rules without a host), each list in precedence order."""
    upstreams: dict[str, Backend]
    tls: list[TlsBinding]
    default: Route | None = None
    """Its defaultBackend: for its own hosts' unmatched paths, and for unmatched hosts."""


def first_of_each_path(host: str, routes: list[Route], errors: list[str]) -> list[Route]:
    """One route per path and type on a host: the first (in precedence, then age) serves it,
    a later one is named (Envoy would never reach it)."""
    seen: dict[tuple[str, str], Route] = {}
    kept: list[Route] = []
    for route in routes:
        first = seen.setdefault((route.path, route.kind), route)
        if first is route:
            kept.append(route)
        elif first.origin != route.origin:
            errors.append(
                f"{route.origin}: {route.kind} {route.path} on host {host} is served by"
                f" {first.origin}, which is older; this one is not used"
            )
    return kept


def age_order(obj: KubeObject) -> tuple[str, str, str]:
    """Who wins a conflict Kubernetes leaves open: the oldest object (creationTimestamp), then
    namespace/name. An object without a timestamp (a manifest file) counts as oldest."""
    created = (obj.body.get("metadata") or {}).get("creationTimestamp")
    stamp = created.isoformat() if isinstance(created, datetime.datetime) else str(created or "")
    return (stamp, obj.namespace, obj.name)


def claim_tls_hosts(model: Model) -> None:
    """One certificate per SNI name: Envoy refuses two filter chains that match the same
    name, and with them the whole HTTPS listener. The first binding in age order keeps a
    name; a later one loses it (logged, naming both), and one with no name left is dropped.
    A binding without hosts is the default certificate: there is one."""
    owners: dict[str, TlsBinding] = {}
    kept: list[TlsBinding] = []
    for binding in model.tls:
        free: list[str] = []
        for host in dict.fromkeys(binding.hosts or ("",)):
            owner = owners.get(host)
            if owner is None:
                owners[host] = binding
                free.append(host)
            else:
                shown = f"TLS host {host}" if host else "the default TLS certificate (no hosts)"
                model.errors.append(
                    f"{binding.origin}: {shown} is already served by {owner.origin}"
                    f" with Secret {owner.secret}; not with {binding.secret}"
                )
        if free:
            hosts = tuple(h for h in free if h)
            kept.append(binding if hosts == binding.hosts else replace(binding, hosts=hosts))
    model.tls = kept


def default_class(classes: Iterable[KubeObject]) -> str | None:
    """The IngressClass marked default (the first by name, should several be)."""
    for obj in sorted(classes, key=lambda c: c.name):
        annotations = obj.body.get("metadata", {}).get("annotations") or {}
        if str(annotations.get(DEFAULT_CLASS_ANNOTATION, "")).lower() == "true":
            return obj.name
    return None


def our_class(ingress: KubeObject, wanted: str | None, default_class: str | None) -> bool:
    if wanted is None:
        return True
    spec = ingress.body.get("spec") or {}
    annotations = ingress.body.get("metadata", {}).get("annotations") or {}
    named = spec.get("ingressClassName") or annotations.get(LEGACY_CLASS_ANNOTATION)
    return named == wanted if named else default_class == wanted


def services_named(ingress: KubeObject) -> set[tuple[str, str]]:
    """(namespace, name) of every Service the Ingress names: its part depends on them."""
    spec = ingress.body.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    backends = [spec.get("defaultBackend")]
    for rule in spec.get("rules") or []:
        paths = (rule.get("http") or {}).get("paths") or [] if isinstance(rule, dict) else []
        backends += [path.get("backend") for path in paths if isinstance(path, dict)]
    found = set()
    for backend in backends:
        service = backend.get("service") if isinstance(backend, dict) else None
        if isinstance(service, dict) and service.get("name"):
            found.add((ingress.namespace, str(service["name"])))
    return found


def ingress_part(
    ingress: KubeObject,
    services: dict[tuple[str, str], KubeObject],
    slices: dict[tuple[str, str], list[dict[str, Any]]],
    resolved: Resolved,
) -> IngressPart:
    """All or nothing: a bad path rejects the whole Ingress."""
    spec = ingress.body.get("spec")
    if not isinstance(spec, dict):
        raise Rejected("has no spec")
    staged: list[tuple[str, Route]] = []
    upstreams: dict[str, Backend] = {}
    origin = describe(ingress)

    def resolve(backend: Any, where: str) -> Upstream:
        upstream, backend = resolve_backend(
            ingress.namespace, backend, services, slices, where, resolved
        )
        upstreams[upstream.cluster] = backend
        return upstream

    for index, rule in enumerate(spec.get("rules") or []):
        host = _host(rule.get("host"))
        for number, path in enumerate((rule.get("http") or {}).get("paths") or []):
            where = f"rules[{index}].http.paths[{number}]"
            value, kind = _route(path, where)
            upstream = resolve(path.get("backend"), where)
            staged.append((host, Route(value, kind, upstream, origin)))
    default = None
    if spec.get("defaultBackend") is not None:
        upstream = resolve(spec["defaultBackend"], "defaultBackend")
        default = Route("/", PREFIX, upstream, origin)
    if not staged and default is None:
        raise Rejected("has no rules and no defaultBackend")
    tls = [_tls(ingress, entry, i) for i, entry in enumerate(spec.get("tls") or [])]
    staged.sort(key=lambda item: (item[0], item[1].precedence))  # stable: ties keep order
    by_host: dict[str, list[Route]] = {}
    for host, route in _one_route_per_path(staged):
        by_host.setdefault(host, []).append(route)
    return IngressPart(by_host, upstreams, tls, default)


def _one_route_per_path(staged: list[tuple[str, Route]]) -> list[tuple[str, Route]]:
    """Within one Ingress the first of two rules with the same host, path and type wins
    (the API server allows both; Envoy would never reach the second)."""
    seen: set[tuple[str, str, str]] = set()
    kept = []
    for host, route in staged:
        if (host, route.path, route.kind) not in seen:
            seen.add((host, route.path, route.kind))
            kept.append((host, route))
    return kept


def _host(value: Any) -> str:
    """The sources checked the syntax (a DNS name or `*.` one); matching ignores case."""
    return "*" if value in (None, "") else str(value).lower()


CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _route(path: dict[str, Any], where: str) -> tuple[str, str]:
    """The path and how it matches. Kubernetes accepts some paths no request path can
    match and Envoy refuses (`?` or `#` in a prefix, control characters): rejected here,
    naming the path, rather than NACKed by every proxy."""
    value = str(path.get("path") or "/")
    if not value.startswith("/"):
        raise Rejected(f"{where}.path {value!r} must start with /")
    if CONTROL.search(value):
        raise Rejected(f"{where}.path {value!r} has a control character")
    if path["pathType"] == EXACT:
        return value, EXACT
    if "?" in value or "#" in value:
        raise Rejected(
            f"{where}.path {value!r}: a prefix with ? or # matches no request path"
            " (the query and fragment are not part of it)"
        )
    return (value.rstrip("/") or "/"), PREFIX


def _tls(ingress: KubeObject, entry: Any, index: int) -> TlsBinding:
    if not entry.get("secretName"):
        raise Rejected(f"tls[{index}] needs secretName")
    hosts = tuple(str(h).lower() for h in entry.get("hosts") or [])
    secret = f"{ingress.namespace}/{entry['secretName']}"
    return TlsBinding(hosts, secret, origin=describe(ingress))
