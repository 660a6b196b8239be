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
  Service's `port`) or by name; endpoints are the *ready* addresses of the EndpointSlices
  labelled `kubernetes.io/service-name`, at the slice port of the same name.
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
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from xds_server.model.backends import Resolved, resolve_backend, slices_by_service
from xds_server.model.secrets import Checked, add_secrets
from xds_server.model.types import (
    EXACT,
    PREFIX,
    Endpoint,
    Host,
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
    EndpointSlices do not change."""

    routes: list[tuple[str, Route]]
    upstreams: dict[str, list[Endpoint]]
    tls: list[TlsBinding]
    default: Route | None = None
    """Its defaultBackend: for its own hosts' unmatched paths, and for unmatched hosts."""


class ModelMemo:
    """Per-Ingress results kept between builds. A source hands back the very same object
    for an unchanged manifest, so a change to one Ingress re-reads only that Ingress; a
    change to any Service or EndpointSlice starts afresh (endpoints are shared)."""

    def __init__(self) -> None:
        self.world: tuple[int, ...] = ()
        self.parts: dict[int, tuple[dict[str, Any], IngressPart | Rejected]] = {}
        self.secrets: Checked = {}
        self._refs: list[KubeObject] = []

    def start(self, backends: list[KubeObject]) -> None:
        world = tuple(id(obj.body) for obj in backends)
        if world != self.world:
            self.world, self.parts = world, {}
        self._refs = backends  # keep the bodies alive: their ids stay theirs

    def part(self, ingress: KubeObject, compute: Any) -> IngressPart:
        found = self.parts.get(id(ingress.body))
        if found is None or found[0] is not ingress.body:
            try:
                result: IngressPart | Rejected = compute()
            except Rejected as exc:
                result = exc
            except Exception as exc:  # a shape the sources let through: this object only
                log.exception("model: %s/%s", ingress.namespace, ingress.name)
                result = Rejected(f"cannot be used ({type(exc).__name__}: {exc})")
            found = (ingress.body, result)
            self.parts[id(ingress.body)] = found
        if isinstance(found[1], Rejected):
            raise found[1]
        return found[1]

    def forget_except(self, alive: set[int]) -> None:
        for key in set(self.parts) - alive:
            del self.parts[key]


def build(
    objects: Iterable[KubeObject], ingress_class: str | None, memo: ModelMemo | None = None
) -> Model:
    """The model for a set of objects; rejected objects are listed in `model.errors`."""
    by_kind: dict[str, list[KubeObject]] = defaultdict(list)
    for obj in objects:
        by_kind[obj.kind].append(obj)
    model = Model()
    memo = memo or ModelMemo()
    memo.start(by_kind["Service"] + by_kind["EndpointSlice"])
    services = {(o.namespace, o.name): o for o in by_kind["Service"]}
    slices = slices_by_service(by_kind["EndpointSlice"])
    resolved: Resolved = {}
    default_class = _default_class(by_kind["IngressClass"])
    alive: set[int] = set()
    first_part: dict[str, int] = {}
    shared: set[str] = set()
    for ingress in sorted(by_kind["Ingress"], key=age_order):
        if not _our_class(ingress, ingress_class, default_class):
            continue
        alive.add(id(ingress.body))
        try:
            part = memo.part(
                ingress, lambda i=ingress: _ingress_part(i, services, slices, resolved)
            )
        except Rejected as exc:
            model.errors.append(f"{describe(ingress)}: {exc}")
            continue
        for host, route in part.routes:
            entry = model.hosts.get(host)
            if entry is None:
                entry = model.hosts[host] = Host(host)
            if first_part.setdefault(host, id(part)) != id(part):
                shared.add(host)  # routes from several Ingresses: sorted again below
            entry.routes.append(route)
        if part.default is not None:
            _claim_defaults(model, part)
        model.clusters.update(part.upstreams)
        model.tls.extend(part.tls)
        model.served.add((ingress.namespace, ingress.name))
    memo.forget_except(alive)
    for host in shared:  # each part's routes come sorted already, without duplicates
        entry = model.hosts[host]
        entry.routes.sort(key=lambda r: r.precedence)  # stable: the oldest first
        entry.routes = _first_of_each_path(entry.name, entry.routes, model.errors)
    _claim_tls_hosts(model)
    add_secrets(model, by_kind["Secret"], memo.secrets)
    return model


def _claim_defaults(model: Model, part: IngressPart) -> None:
    """An Ingress' defaultBackend serves its own hosts' unmatched paths, and requests whose
    host matches no rule (the `*` host); for each, the oldest Ingress claiming it wins and a
    later one is named."""
    default = part.default
    assert default is not None
    for name in [*dict.fromkeys(h for h, _ in part.routes if h != "*"), "*"]:
        host = model.hosts.setdefault(name, Host(name))
        if host.default is None:
            host.default = default
        elif host.default.origin != default.origin:
            where = "requests matching no host" if name == "*" else f"host {name}"
            model.errors.append(
                f"{default.origin}: defaultBackend not used for {where}: {host.default.origin}"
                " is older and has one"
            )


def _first_of_each_path(host: str, routes: list[Route], errors: list[str]) -> list[Route]:
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


def _claim_tls_hosts(model: Model) -> None:
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


def _default_class(classes: list[KubeObject]) -> str | None:
    for obj in classes:
        annotations = obj.body.get("metadata", {}).get("annotations") or {}
        if str(annotations.get(DEFAULT_CLASS_ANNOTATION, "")).lower() == "true":
            return obj.name
    return None


def _our_class(ingress: KubeObject, wanted: str | None, default_class: str | None) -> bool:
    if wanted is None:
        return True
    spec = ingress.body.get("spec") or {}
    annotations = ingress.body.get("metadata", {}).get("annotations") or {}
    named = spec.get("ingressClassName") or annotations.get(LEGACY_CLASS_ANNOTATION)
    return named == wanted if named else default_class == wanted


def _ingress_part(
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
    upstreams: dict[str, list[Endpoint]] = {}
    origin = describe(ingress)

    def resolve(backend: Any, where: str) -> Upstream:
        upstream, endpoints = resolve_backend(
            ingress.namespace, backend, services, slices, where, resolved
        )
        upstreams[upstream.cluster] = endpoints
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
    return IngressPart(_one_route_per_path(staged), upstreams, tls, default)


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
