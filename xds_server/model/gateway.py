"""Gateway API (gateway.networking.k8s.io/v1) -> the model: which Gateways are ours, where
their listeners are served, which HTTPRoutes attach to which listeners, what each rule
matches and where it sends traffic, and the status the spec asks for.

Semantics as the Gateway API spec and its conformance suite define them (v1.6):

* A GatewayClass is ours when `spec.controllerName` is ours; a Gateway of one of our classes
  is served at its `spec.addresses` (IPAddress), else at an address of the pool, else at the
  Envoy address, each listener on its own port. HTTP listeners are served; a listener of
  another protocol, or two listeners that cannot share a port, are reported as the spec says.
* An HTTPRoute attaches to a listener its parentRef names (the Gateway, `sectionName`,
  `port`) when the listener allows its namespace (Same, All, or a label Selector on the
  Namespace) and its kind, and when their hostnames intersect (a wildcard matches any number
  of labels). Otherwise its parent status says why (NoMatchingParent, NotAllowedByListeners,
  NoMatchingListenerHostname).
* Backends are Services (core group); another namespace's only through a ReferenceGrant in
  that namespace. A backend that cannot be used gets 500 for its share of the traffic; a
  weight of 0 gets nothing; a rule whose backends all fail (or all weigh 0) answers 500.
* Precedence across every route of a listener's host: Exact path, then the longest prefix,
  then a method match, then the most header matches, then the most query matches, then the
  oldest route, then namespace/name, then rule and match order.

Everything here is computed from the objects alone, so the same objects give the same model
and status on every replica.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from xds_server.model.backends import Resolved, resolve_backend
from xds_server.model.ingress import age_order
from xds_server.model.types import Endpoint, Rejected, describe
from xds_server.sources.objects import KubeObject

GROUP = "gateway.networking.k8s.io"
DEFAULT_CONTROLLER = "envoy-lifecycle.io/gateway-controller"
KINDS = frozenset({"GatewayClass", "Gateway", "HTTPRoute", "ReferenceGrant", "Namespace"})
"""The kinds only the Gateway API part reads (Services, slices and Secrets too)."""
SERVED_PROTOCOLS = ("HTTP",)
EXACT, PREFIX = "Exact", "PathPrefix"
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_|~`]+$")
REDIRECT_CODES = (301, 302, 303, 307, 308)

Named = tuple[str, str]
Status = dict[str, Any]


@dataclass(frozen=True)
class WeightedBackend:
    cluster: str | None
    """None: a backend that cannot be used (its share answers 500)."""
    weight: int


@dataclass(frozen=True)
class HeaderEdits:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class Redirect:
    scheme: str | None = None
    hostname: str | None = None
    port: int | None = None
    path: tuple[str, str] | None = None
    """(ReplaceFullPath or ReplacePrefixMatch, value)."""
    status: int = 302


@dataclass(frozen=True)
class Rewrite:
    hostname: str | None = None
    path: tuple[str, str] | None = None


@dataclass(frozen=True)
class GatewayRoute:
    """One match of one rule of one HTTPRoute, on one host of one listener."""

    path: str
    path_kind: str  # EXACT or PREFIX
    method: str | None
    headers: tuple[tuple[str, str], ...]
    query: tuple[tuple[str, str], ...]
    backends: tuple[WeightedBackend, ...]
    request_headers: HeaderEdits
    response_headers: HeaderEdits
    redirect: Redirect | None
    rewrite: Rewrite | None
    rank: tuple[Any, ...]
    origin: str

    @property
    def fails(self) -> bool:
        """Every backend is invalid or weighs 0: the rule answers 500."""
        return self.redirect is None and not any(
            b.cluster is not None and b.weight > 0 for b in self.backends
        )


@dataclass
class Port:
    """What Envoy serves on one address and port: virtual hosts by hostname."""

    address: str
    port: int
    hosts: dict[str, list[GatewayRoute]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"gateway_{self.address}_{self.port}"


@dataclass
class GatewayPart:
    ports: dict[tuple[str, int], Port] = field(default_factory=dict)
    upstreams: dict[str, list[Endpoint]] = field(default_factory=dict)
    status: dict[str, Status] = field(default_factory=dict)
    """`Kind/namespace/name` (`Kind/name` when cluster-scoped) -> the object's status."""
    errors: list[str] = field(default_factory=list)


@dataclass
class _Listener:
    gateway: KubeObject
    spec: dict[str, Any]
    address: str
    kinds: list[dict[str, str]]
    conditions: dict[str, tuple[bool, str, str]]
    attached: int = 0

    @property
    def name(self) -> str:
        return str(self.spec.get("name", ""))

    @property
    def port(self) -> int:
        return int(self.spec.get("port", 0))

    @property
    def hostname(self) -> str | None:
        value = self.spec.get("hostname")
        return str(value).lower() if value else None

    @property
    def usable(self) -> bool:
        return all(self.conditions[t][0] for t in ("Accepted", "ResolvedRefs", "Programmed")) and (
            not self.conditions["Conflicted"][0]
        )


@dataclass(frozen=True)
class GatewaySettings:
    """The serve flags of the Gateway API part."""

    controller: str = DEFAULT_CONTROLLER
    pool: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    envoy_address: str = "0.0.0.0"


@dataclass
class GatewayInputs:
    objects: Mapping[tuple[str, str, str], KubeObject]
    controller: str = DEFAULT_CONTROLLER
    pool: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    envoy_address: str = "0.0.0.0"


def build_gateways(
    inputs: GatewayInputs,
    services: dict[Named, KubeObject],
    slices: dict[Named, list[dict[str, Any]]],
) -> GatewayPart:
    part = GatewayPart()
    by_kind: dict[str, list[KubeObject]] = {}
    for obj in inputs.objects.values():
        by_kind.setdefault(obj.kind, []).append(obj)
    classes = _classes(by_kind.get("GatewayClass", []), inputs.controller, part)
    gateways = sorted(
        (g for g in by_kind.get("Gateway", []) if _spec(g).get("gatewayClassName") in classes),
        key=lambda g: (g.namespace, g.name),
    )
    addresses = _addresses(gateways, inputs)
    namespaces = {
        o.name: _labels(o) | {"kubernetes.io/metadata.name": o.name}
        for o in by_kind.get("Namespace", [])
    }
    grants = by_kind.get("ReferenceGrant", [])
    listeners: dict[Named, list[_Listener]] = {}
    for gateway in gateways:
        listeners[(gateway.namespace, gateway.name)] = _listeners(
            gateway, addresses[(gateway.namespace, gateway.name)]
        )
    resolved: Resolved = {}
    routes = sorted(by_kind.get("HTTPRoute", []), key=age_order)
    for route in routes:
        _attach(
            route,
            listeners,
            namespaces,
            grants,
            services,
            slices,
            resolved,
            part,
            inputs.controller,
        )
    for gateway in gateways:
        own = listeners[(gateway.namespace, gateway.name)]
        part.status[_key(gateway)] = _gateway_status(
            gateway, own, addresses[(gateway.namespace, gateway.name)]
        )
    for port in part.ports.values():
        port.hosts = _merged(port.hosts)
    return part


def _merged(hosts: dict[str, list[GatewayRoute]]) -> dict[str, list[GatewayRoute]]:
    """Each host's routes with those of every wider name that covers it (`*.com` covers
    `example.com`; a route without hostnames covers all): precedence is decided across all
    the routes a request could match, and Envoy picks one virtual host, never falls back."""
    merged = {}
    for host in hosts:
        wider = [h for h in hosts if h != host and (h == "*" or _covers(h, host))]
        routes = [r for h in (host, *wider) for r in hosts[h]]
        merged[host] = sorted(dict.fromkeys(routes), key=lambda r: r.rank)
    return merged


def _key(obj: KubeObject, cluster_scoped: bool = False) -> str:
    return f"{obj.kind}/{obj.name}" if cluster_scoped else f"{obj.kind}/{obj.namespace}/{obj.name}"


def _spec(obj: KubeObject) -> dict[str, Any]:
    spec = obj.body.get("spec")
    return spec if isinstance(spec, dict) else {}


def _labels(obj: KubeObject) -> dict[str, str]:
    labels = (obj.body.get("metadata") or {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def _generation(obj: KubeObject) -> int:
    value = (obj.body.get("metadata") or {}).get("generation")
    return int(value) if isinstance(value, int) else 1


def condition(kind: str, ok: bool, reason: str, message: str, generation: int) -> Status:
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


# -- classes and gateways ---------------------------------------------------------------


def _classes(objects: list[KubeObject], controller: str, part: GatewayPart) -> set[str]:
    ours = set()
    for obj in objects:
        if _spec(obj).get("controllerName") != controller:
            continue
        ours.add(obj.name)
        accepted = condition(
            "Accepted", True, "Accepted", "served by envoy-lifecycle", _generation(obj)
        )
        part.status[_key(obj, cluster_scoped=True)] = {"conditions": [accepted]}
    return ours


def _addresses(gateways: list[KubeObject], inputs: GatewayInputs) -> dict[Named, str]:
    """Each Gateway's address: its own IPAddress, else a pool address picked from a hash of
    its namespace/name (the same on every replica and after restarts; the next free one on a
    collision, in namespace/name order), else the Envoy address."""
    found: dict[Named, str] = {}
    taken: set[str] = set()
    pending = []
    for gateway in gateways:
        asked = [
            a
            for a in _spec(gateway).get("addresses") or []
            if isinstance(a, dict) and a.get("type", "IPAddress") == "IPAddress"
        ]
        if asked and asked[0].get("value"):
            found[(gateway.namespace, gateway.name)] = str(asked[0]["value"])
            taken.add(found[(gateway.namespace, gateway.name)])
        else:
            pending.append(gateway)
    pool = inputs.pool
    for gateway in pending:
        if pool is None or pool.num_addresses < 3:
            found[(gateway.namespace, gateway.name)] = inputs.envoy_address
            continue
        size = pool.num_addresses - 2  # no network or broadcast address
        digest = hashlib.sha256(f"{gateway.namespace}/{gateway.name}".encode()).digest()
        start = int.from_bytes(digest[:8], "big") % size
        for step in range(size):
            address = str(pool.network_address + 1 + (start + step) % size)
            if address not in taken:
                found[(gateway.namespace, gateway.name)] = address
                taken.add(address)
                break
        else:
            found[(gateway.namespace, gateway.name)] = inputs.envoy_address
    return found


def _listeners(gateway: KubeObject, address: str) -> list[_Listener]:
    items = [x for x in _spec(gateway).get("listeners") or [] if isinstance(x, dict)]
    generation = _generation(gateway)
    found = []
    for spec in items:
        found.append(_listener(gateway, spec, address, generation))
    _conflicts(found, generation)
    return found


def _listener(gateway: KubeObject, spec: dict[str, Any], address: str, gen: int) -> _Listener:
    protocol = spec.get("protocol")
    conditions = {
        "Accepted": (True, "Accepted", "listener accepted"),
        "ResolvedRefs": (True, "ResolvedRefs", "references resolved"),
        "Programmed": (True, "Programmed", f"served at {address}:{spec.get('port')}"),
        "Conflicted": (False, "NoConflicts", "no conflict"),
    }
    kinds = [{"group": GROUP, "kind": "HTTPRoute"}]
    if protocol not in SERVED_PROTOCOLS:
        conditions["Accepted"] = (
            False,
            "UnsupportedProtocol",
            f"protocol {protocol} is not served by envoy-lifecycle yet",
        )
        conditions["Programmed"] = (False, "Invalid", "not served")
        kinds = []
    asked = (spec.get("allowedRoutes") or {}).get("kinds")
    if isinstance(asked, list) and asked and kinds:
        wanted = [k for k in asked if isinstance(k, dict)]
        valid = [
            k for k in wanted if k.get("kind") == "HTTPRoute" and k.get("group", GROUP) == GROUP
        ]
        kinds = [{"group": GROUP, "kind": "HTTPRoute"}] if valid else []
        if len(valid) != len(wanted):
            conditions["ResolvedRefs"] = (False, "InvalidRouteKinds", "only HTTPRoute is supported")
    return _Listener(gateway, spec, address, kinds, conditions)


def _conflicts(listeners: list[_Listener], generation: int) -> None:
    by_port: dict[int, list[_Listener]] = {}
    for listener in listeners:
        by_port.setdefault(listener.port, []).append(listener)
    for same in by_port.values():
        if len({str(x.spec.get("protocol")) for x in same}) > 1:
            for listener in same:
                listener.conditions["Conflicted"] = (
                    True,
                    "ProtocolConflict",
                    "another listener on this port has another protocol",
                )
            continue
        seen: dict[str | None, _Listener] = {}
        for listener in same:
            if listener.hostname in seen:
                for other in (listener, seen[listener.hostname]):
                    other.conditions["Conflicted"] = (
                        True,
                        "HostnameConflict",
                        "another listener has this port and hostname",
                    )
            seen.setdefault(listener.hostname, listener)
    for listener in listeners:
        if listener.conditions["Conflicted"][0]:
            listener.conditions["Programmed"] = (False, "Invalid", "conflicted")


def _gateway_status(gateway: KubeObject, listeners: list[_Listener], address: str) -> Status:
    gen = _generation(gateway)
    programmed = any(x.usable for x in listeners)
    return {
        "addresses": [{"type": "IPAddress", "value": address}],
        "conditions": [
            condition("Accepted", True, "Accepted", "accepted by envoy-lifecycle", gen),
            condition(
                "Programmed",
                programmed,
                "Programmed" if programmed else "Invalid",
                f"served at {address}" if programmed else "no listener can be served",
                gen,
            ),
        ],
        "listeners": [
            {
                "name": x.name,
                "supportedKinds": x.kinds,
                "attachedRoutes": x.attached,
                "conditions": [
                    condition(t, ok, reason, message, gen)
                    for t, (ok, reason, message) in x.conditions.items()
                ],
            }
            for x in listeners
        ],
    }


# -- routes ------------------------------------------------------------------------------


def _attach(
    route: KubeObject,
    listeners: dict[Named, list[_Listener]],
    namespaces: dict[str, dict[str, str]],
    grants: list[KubeObject],
    services: dict[Named, KubeObject],
    slices: dict[Named, list[dict[str, Any]]],
    resolved: Resolved,
    part: GatewayPart,
    controller: str,
) -> None:
    spec = _spec(route)
    gen = _generation(route)
    hostnames = [str(h).lower() for h in spec.get("hostnames") or []]
    rules = [r for r in spec.get("rules") or [{}] if isinstance(r, dict)] or [{}]
    backends, refs = _rules_backends(route, rules, grants, services, slices, resolved, part)
    try:
        compiled: list[GatewayRoute] | None = _compile(route, rules, backends)
        unsupported = ""
    except Rejected as exc:
        compiled, unsupported = None, str(exc)
    parents = []
    for parent in spec.get("parentRefs") or []:
        if not isinstance(parent, dict) or parent.get("group", GROUP) != GROUP:
            continue
        if parent.get("kind", "Gateway") != "Gateway":
            continue
        named = (str(parent.get("namespace") or route.namespace), str(parent.get("name")))
        if named not in listeners:
            continue  # not one of ours
        accepted = _accept(route, parent, listeners[named], hostnames, namespaces)
        if compiled is None:
            accepted = _Acceptance([], "UnsupportedValue", unsupported)
        for listener, hosts in accepted.attached:
            listener.attached += 1
            _add_routes(compiled or [], listener, hosts, part)
        parents.append(
            {
                "parentRef": parent,
                "controllerName": controller,
                "conditions": [
                    condition("Accepted", accepted.ok, accepted.reason, accepted.message, gen),
                    condition("ResolvedRefs", refs[0], refs[1], refs[2], gen),
                ],
            }
        )
    if parents:
        part.status[_key(route)] = {"parents": parents}


@dataclass
class _Acceptance:
    attached: list[tuple[_Listener, list[str]]]
    reason: str
    message: str

    @property
    def ok(self) -> bool:
        return bool(self.attached)


def _accept(
    route: KubeObject,
    parent: dict[str, Any],
    candidates: list[_Listener],
    hostnames: list[str],
    namespaces: dict[str, dict[str, str]],
) -> _Acceptance:
    named = [
        x
        for x in candidates
        if (parent.get("sectionName") in (None, x.name)) and (parent.get("port") in (None, x.port))
    ]
    if not named:
        return _Acceptance([], "NoMatchingParent", "no listener matches sectionName/port")
    allowed = [x for x in named if x.usable and x.kinds and _allows(x, route, namespaces)]
    if not allowed:
        return _Acceptance(
            [],
            "NotAllowedByListeners",
            "no listener allows routes of this kind from this namespace",
        )
    attached = []
    for listener in allowed:
        hosts = intersect(listener.hostname, hostnames)
        if hosts:
            attached.append((listener, hosts))
    if not attached:
        return _Acceptance(
            [], "NoMatchingListenerHostname", "no hostname intersects the listeners' hostnames"
        )
    return _Acceptance(attached, "Accepted", "attached")


def _allows(listener: _Listener, route: KubeObject, namespaces: dict[str, dict[str, str]]) -> bool:
    policy = (listener.spec.get("allowedRoutes") or {}).get("namespaces") or {}
    origin = policy.get("from", "Same")
    if origin == "All":
        return True
    if origin == "Same":
        return route.namespace == listener.gateway.namespace
    if origin == "Selector":
        return selects(policy.get("selector") or {}, namespaces.get(route.namespace, {}))
    return False


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(str(key)) != str(value):
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = str(expression.get("key")), expression.get("operator")
        values = [str(v) for v in expression.get("values") or []]
        present = key in labels
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def intersect(listener: str | None, route: list[str]) -> list[str]:
    """The hostnames a route serves on a listener: the spec's intersection, where a wildcard
    `*.example.com` matches names of any depth under example.com (not example.com itself)."""
    if not route:
        return [listener or "*"]
    if listener is None:
        return list(dict.fromkeys(route))
    found = []
    for host in route:
        if host == listener or _covers(listener, host):
            found.append(host)
        elif _covers(host, listener):
            found.append(listener)
    return list(dict.fromkeys(found))


def _covers(wildcard: str, host: str) -> bool:
    return (
        wildcard.startswith("*.") and host.endswith(wildcard[1:]) and len(host) > len(wildcard) - 1
    )


# -- rules --------------------------------------------------------------------------------


def _rules_backends(
    route: KubeObject,
    rules: list[dict[str, Any]],
    grants: list[KubeObject],
    services: dict[Named, KubeObject],
    slices: dict[Named, list[dict[str, Any]]],
    resolved: Resolved,
    part: GatewayPart,
) -> tuple[list[tuple[WeightedBackend, ...]], tuple[bool, str, str]]:
    """Each rule's backends, and the route's ResolvedRefs condition (the first problem)."""
    problem: tuple[bool, str, str] = (True, "ResolvedRefs", "every backend resolved")
    found = []
    for index, rule in enumerate(rules):
        backends = []
        for number, ref in enumerate(rule.get("backendRefs") or []):
            if not isinstance(ref, dict):
                continue
            weight = int(ref.get("weight", 1))
            cluster, issue = _backend(
                route,
                ref,
                grants,
                services,
                slices,
                resolved,
                part,
                f"rules[{index}].backendRefs[{number}]",
            )
            if issue is not None and problem[0]:
                problem = (False, issue[0], issue[1])
            backends.append(WeightedBackend(cluster, weight))
        found.append(tuple(backends))
    return found, problem


def _backend(
    route: KubeObject,
    ref: dict[str, Any],
    grants: list[KubeObject],
    services: dict[Named, KubeObject],
    slices: dict[Named, list[dict[str, Any]]],
    resolved: Resolved,
    part: GatewayPart,
    where: str,
) -> tuple[str | None, tuple[str, str] | None]:
    if ref.get("group", "") not in ("", "core") or ref.get("kind", "Service") != "Service":
        return None, ("InvalidKind", f"{where}: only Services are supported backends")
    namespace = str(ref.get("namespace") or route.namespace)
    name = str(ref.get("name"))
    if namespace != route.namespace and not granted(grants, route, namespace, name):
        return None, ("RefNotPermitted", f"{where}: no ReferenceGrant in {namespace} allows it")
    if ref.get("port") is None:
        return None, ("BackendNotFound", f"{where}: a Service backend needs a port")
    backend = {"service": {"name": name, "port": {"number": int(ref["port"])}}}
    try:
        upstream, endpoints = resolve_backend(namespace, backend, services, slices, where, resolved)
    except Rejected as exc:
        return None, ("BackendNotFound", str(exc))
    part.upstreams[upstream.cluster] = endpoints
    return upstream.cluster, None


def granted(grants: Iterable[KubeObject], route: KubeObject, namespace: str, name: str) -> bool:
    """A ReferenceGrant in the Service's namespace lets this route's namespace reach it."""
    for grant in grants:
        if grant.namespace != namespace:
            continue
        spec = _spec(grant)
        sources = [f for f in spec.get("from") or [] if isinstance(f, dict)]
        targets = [t for t in spec.get("to") or [] if isinstance(t, dict)]
        if not any(
            f.get("group") == GROUP
            and f.get("kind") == "HTTPRoute"
            and f.get("namespace") == route.namespace
            for f in sources
        ):
            continue
        if any(
            t.get("group", "") in ("", "core")
            and t.get("kind") == "Service"
            and t.get("name") in (None, "", name)
            for t in targets
        ):
            return True
    return False


def _compile(
    route: KubeObject, rules: list[dict[str, Any]], backends: list[tuple[WeightedBackend, ...]]
) -> list[GatewayRoute]:
    """Every match of every rule, or Rejected naming the first thing not supported."""
    age = age_order(route)
    origin = describe(route)
    found = []
    for index, rule in enumerate(rules):
        filters = _filters(rule.get("filters") or [], f"rules[{index}]")
        for number, match in enumerate(rule.get("matches") or [{}]):
            found.append(
                _route(
                    match if isinstance(match, dict) else {},
                    backends[index],
                    filters,
                    (age, index, number),
                    origin,
                    f"rules[{index}].matches[{number}]",
                )
            )
    return found


def _add_routes(
    compiled: list[GatewayRoute], listener: _Listener, hosts: list[str], part: GatewayPart
) -> None:
    key = (listener.address, listener.port)
    port = part.ports.setdefault(key, Port(listener.address, listener.port))
    for host in hosts:
        routes = port.hosts.setdefault(host, [])
        routes += [r for r in compiled if r not in routes]  # two parentRefs, one listener


@dataclass(frozen=True)
class _Filters:
    request_headers: HeaderEdits = HeaderEdits()
    response_headers: HeaderEdits = HeaderEdits()
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None


def _filters(items: list[Any], where: str) -> _Filters:
    found = _Filters()
    for number, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        at = f"{where}.filters[{number}]"
        if kind == "RequestHeaderModifier":
            found = _Filters(
                _edits(item.get("requestHeaderModifier"), at),
                found.response_headers,
                found.redirect,
                found.rewrite,
            )
        elif kind == "ResponseHeaderModifier":
            found = _Filters(
                found.request_headers,
                _edits(item.get("responseHeaderModifier"), at),
                found.redirect,
                found.rewrite,
            )
        elif kind == "RequestRedirect":
            found = _Filters(
                found.request_headers,
                found.response_headers,
                _redirect(item.get("requestRedirect") or {}, at),
                found.rewrite,
            )
        elif kind == "URLRewrite":
            found = _Filters(
                found.request_headers,
                found.response_headers,
                found.redirect,
                _rewrite(item.get("urlRewrite") or {}),
            )
        else:
            raise Rejected(f"{at}: filter {kind} is not supported")
    return found


def _edits(spec: Any, where: str) -> HeaderEdits:
    spec = spec if isinstance(spec, dict) else {}

    def pairs(name: str) -> tuple[tuple[str, str], ...]:
        items = [x for x in spec.get(name) or [] if isinstance(x, dict)]
        for item in items:
            _header_name(str(item.get("name")), where)
        return tuple((str(x["name"]), str(x.get("value", ""))) for x in items)

    remove = tuple(str(x) for x in spec.get("remove") or [])
    for name in remove:
        _header_name(name, where)
    return HeaderEdits(pairs("set"), pairs("add"), remove)


def _header_name(name: str, where: str) -> None:
    if not HEADER_NAME.match(name):
        raise Rejected(f"{where}: {name!r} is not a valid header name")


def _redirect(spec: dict[str, Any], where: str) -> Redirect:
    status = int(spec.get("statusCode", 302))
    if status not in REDIRECT_CODES:
        raise Rejected(f"{where}: redirect status {status} is not one of {REDIRECT_CODES}")
    return Redirect(
        scheme=spec.get("scheme"),
        hostname=spec.get("hostname"),
        port=int(spec["port"]) if spec.get("port") is not None else None,
        path=_path_modifier(spec.get("path")),
        status=status,
    )


def _rewrite(spec: dict[str, Any]) -> Rewrite:
    return Rewrite(hostname=spec.get("hostname"), path=_path_modifier(spec.get("path")))


def _path_modifier(spec: Any) -> tuple[str, str] | None:
    if not isinstance(spec, dict):
        return None
    kind = spec.get("type")
    if kind == "ReplaceFullPath":
        return (kind, str(spec.get("replaceFullPath", "/")))
    if kind == "ReplacePrefixMatch":
        return (kind, str(spec.get("replacePrefixMatch", "/")))
    return None


def _route(
    match: dict[str, Any],
    backends: tuple[WeightedBackend, ...],
    filters: _Filters,
    order: tuple[Any, ...],
    origin: str,
    where: str,
) -> GatewayRoute:
    path = match.get("path") or {}
    kind = path.get("type", PREFIX)
    value = str(path.get("value", "/"))
    if kind not in (EXACT, PREFIX):
        raise Rejected(f"{where}.path: {kind} matches are not supported")
    if not value.startswith("/"):
        raise Rejected(f"{where}.path: {value!r} must start with /")
    if kind == PREFIX:
        value = value.rstrip("/") or "/"
    headers = tuple(
        sorted(
            (str(h["name"]).lower(), str(h.get("value", "")))
            for h in match.get("headers") or []
            if isinstance(h, dict) and h.get("type", "Exact") == "Exact"
        )
    )
    for name, _ in headers:
        _header_name(name, f"{where}.headers")
    query = tuple(
        sorted(
            (str(q["name"]), str(q.get("value", "")))
            for q in match.get("queryParams") or []
            if isinstance(q, dict)
        )
    )
    method = match.get("method")
    rank = (
        0 if kind == EXACT else 1,
        -len(value),
        0 if method else 1,
        -len(headers),
        -len(query),
        *order,
    )
    return GatewayRoute(
        value,
        kind,
        str(method) if method else None,
        headers,
        query,
        backends,
        filters.request_headers,
        filters.response_headers,
        filters.redirect,
        filters.rewrite,
        rank,
        origin,
    )
