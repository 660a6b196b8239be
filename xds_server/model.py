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

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from xds_server.sources import KubeObject

DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
LEGACY_CLASS_ANNOTATION = "kubernetes.io/ingress.class"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
EXACT, PREFIX = "Exact", "Prefix"


@dataclass(frozen=True, order=True)
class Endpoint:
    address: str
    port: int


@dataclass(frozen=True)
class Upstream:
    """A Service port as Envoy sees it: one cluster and its ready endpoints."""

    namespace: str
    service: str
    port: str  # the Service port's name, or its number as text

    @property
    def cluster(self) -> str:
        return f"{self.namespace}/{self.service}/{self.port}"


@dataclass(frozen=True)
class Route:
    path: str
    kind: str  # EXACT or PREFIX
    upstream: Upstream

    @property
    def precedence(self) -> tuple[int, int]:
        """Sort key: longer paths first, Exact before Prefix at equal length."""
        return (-len(self.path), 0 if self.kind == EXACT else 1)


@dataclass
class Host:
    name: str  # exact host, `*.domain`, or `*`
    routes: list[Route] = field(default_factory=list)


@dataclass(frozen=True)
class TlsBinding:
    hosts: tuple[str, ...]
    secret: str  # namespace/name


@dataclass(frozen=True)
class TlsSecret:
    name: str  # namespace/name
    certificate: bytes
    key: bytes


@dataclass
class Model:
    hosts: dict[str, Host] = field(default_factory=dict)
    clusters: dict[str, list[Endpoint]] = field(default_factory=dict)
    tls: list[TlsBinding] = field(default_factory=list)
    secrets: dict[str, TlsSecret] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    served: set[tuple[str, str]] = field(default_factory=set)
    """(namespace, name) of every Ingress accepted: whose status the leader writes."""

    def sorted_hosts(self) -> list[Host]:
        """Exact hosts, then wildcards, then the catch-all, each with routes in precedence."""

        def rank(host: Host) -> tuple[int, str]:
            return (2 if host.name == "*" else 1 if host.name.startswith("*.") else 0, host.name)

        return sorted(self.hosts.values(), key=rank)


class Rejected(ValueError):
    """An object that cannot be used; the message names what is wrong."""


def _label(obj: KubeObject) -> str:
    return f"{obj.source}: {obj.kind} {obj.namespace}/{obj.name}"


@dataclass(frozen=True)
class IngressPart:
    """What one Ingress contributes, computed once while it and the Services and
    EndpointSlices do not change."""

    routes: list[tuple[str, Route]]
    upstreams: dict[str, list[Endpoint]]
    tls: list[TlsBinding]


class ModelMemo:
    """Per-Ingress results kept between builds. A source hands back the very same object
    for an unchanged manifest, so a change to one Ingress re-reads only that Ingress; a
    change to any Service or EndpointSlice starts afresh (endpoints are shared)."""

    def __init__(self) -> None:
        self.world: tuple[int, ...] = ()
        self.parts: dict[int, tuple[dict[str, Any], IngressPart | Rejected]] = {}
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
    slices = _slices_by_service(by_kind["EndpointSlice"])
    resolved: dict[tuple[str, str, str], tuple[Upstream, list[Endpoint]]] = {}
    default_class = _default_class(by_kind["IngressClass"])
    alive: set[int] = set()
    first_part: dict[str, int] = {}
    shared: set[str] = set()
    for ingress in sorted(by_kind["Ingress"], key=lambda o: (o.namespace, o.name)):
        if not _our_class(ingress, ingress_class, default_class):
            continue
        alive.add(id(ingress.body))
        try:
            part = memo.part(
                ingress, lambda i=ingress: _ingress_part(i, services, slices, resolved)
            )
        except Rejected as exc:
            model.errors.append(f"{_label(ingress)}: {exc}")
            continue
        for host, route in part.routes:
            entry = model.hosts.get(host)
            if entry is None:
                entry = model.hosts[host] = Host(host)
                first_part[host] = id(part)
            elif first_part[host] != id(part):
                shared.add(host)  # routes from several Ingresses: sorted again below
            entry.routes.append(route)
        model.clusters.update(part.upstreams)
        model.tls.extend(part.tls)
        model.served.add((ingress.namespace, ingress.name))
    memo.forget_except(alive)
    for host in shared:  # each part's routes come sorted already
        model.hosts[host].routes.sort(key=lambda r: r.precedence)
    _add_secrets(model, by_kind["Secret"])
    return model


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


def _slices_by_service(slices: list[KubeObject]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    found: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for obj in slices:
        labels = obj.body.get("metadata", {}).get("labels") or {}
        service = labels.get(SERVICE_NAME_LABEL)
        if service:
            found[(obj.namespace, service)].append(obj.body)
    return found


def _ingress_part(
    ingress: KubeObject,
    services: dict[tuple[str, str], KubeObject],
    slices: dict[tuple[str, str], list[dict[str, Any]]],
    resolved: dict[tuple[str, str, str], tuple[Upstream, list[Endpoint]]],
) -> IngressPart:
    """All or nothing: a bad path rejects the whole Ingress."""
    spec = ingress.body.get("spec")
    if not isinstance(spec, dict):
        raise Rejected("has no spec")
    staged: list[tuple[str, Route]] = []
    upstreams: dict[str, list[Endpoint]] = {}

    def resolve(backend: Any, where: str) -> Upstream:
        upstream, endpoints = _backend(
            ingress.namespace, backend, services, slices, where, resolved
        )
        upstreams[upstream.cluster] = endpoints
        return upstream

    for index, rule in enumerate(spec.get("rules") or []):
        host = _host(rule.get("host"), index)
        for number, path in enumerate((rule.get("http") or {}).get("paths") or []):
            where = f"rules[{index}].http.paths[{number}]"
            value, kind = _route(path, where)
            staged.append((host, Route(value, kind, resolve(path.get("backend"), where))))
    if spec.get("defaultBackend") is not None:
        staged.append(("*", Route("/", PREFIX, resolve(spec["defaultBackend"], "defaultBackend"))))
    if not staged:
        raise Rejected("has no rules and no defaultBackend")
    tls = [_tls(ingress.namespace, entry, i) for i, entry in enumerate(spec.get("tls") or [])]
    staged.sort(key=lambda item: (item[0], item[1].precedence))  # stable: ties keep order
    return IngressPart(staged, upstreams, tls)


def _host(value: Any, index: int) -> str:
    if value in (None, ""):
        return "*"
    host = str(value).lower()
    labels = host.split(".")
    wildcard_ok = labels[0] == "*" and len(labels) > 2 and "*" not in "".join(labels[1:])
    if "*" in host and not wildcard_ok:
        raise Rejected(f"rules[{index}].host {value!r}: a wildcard must be one leading label")
    return host


def _route(path: Any, where: str) -> tuple[str, str]:
    if not isinstance(path, dict):
        raise Rejected(f"{where} is not a mapping")
    value = path.get("path", "/") or "/"
    kind = path.get("pathType")
    if kind not in (EXACT, PREFIX, "ImplementationSpecific"):
        raise Rejected(f"{where}.pathType must be Exact, Prefix or ImplementationSpecific")
    if not str(value).startswith("/"):
        raise Rejected(f"{where}.path {value!r} must start with /")
    value = str(value)
    if kind == EXACT:
        return value, EXACT
    return (value.rstrip("/") or "/"), PREFIX


def _backend(
    namespace: str,
    backend: Any,
    services: dict[tuple[str, str], KubeObject],
    slices: dict[tuple[str, str], list[dict[str, Any]]],
    where: str,
    resolved: dict[tuple[str, str, str], tuple[Upstream, list[Endpoint]]],
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


def _tls(namespace: str, entry: Any, index: int) -> TlsBinding:
    if not isinstance(entry, dict) or not entry.get("secretName"):
        raise Rejected(f"tls[{index}] needs secretName")
    hosts = tuple(str(h).lower() for h in entry.get("hosts") or [])
    return TlsBinding(hosts=hosts, secret=f"{namespace}/{entry['secretName']}")


def _add_secrets(model: Model, secrets: list[KubeObject]) -> None:
    import base64
    import binascii

    wanted = {binding.secret for binding in model.tls}
    for obj in secrets:
        name = f"{obj.namespace}/{obj.name}"
        if name not in wanted:
            continue
        data = obj.body.get("data") or {}
        if (
            obj.body.get("type") != "kubernetes.io/tls"
            or "tls.crt" not in data
            or "tls.key" not in data
        ):
            model.errors.append(
                f"{_label(obj)}: not a kubernetes.io/tls Secret with tls.crt and tls.key"
            )
            continue
        try:
            model.secrets[name] = TlsSecret(
                name, base64.b64decode(data["tls.crt"]), base64.b64decode(data["tls.key"])
            )
        except (binascii.Error, TypeError):
            model.errors.append(f"{_label(obj)}: tls.crt or tls.key is not base64")
    for binding in model.tls:
        if binding.secret not in model.secrets:
            model.errors.append(
                f"TLS secret {binding.secret} not found: its hosts are not served over TLS"
            )
    model.tls = [b for b in model.tls if b.secret in model.secrets]
