"""HTTPRoutes -> listeners: a route attaches to a listener its parentRef names (the Gateway,
`sectionName`, `port`) when the listener allows its namespace (Same, All, or a label
Selector on the Namespace) and its kind, and when their hostnames intersect (a wildcard
matches any number of labels). Otherwise its parent status says why (NoMatchingParent,
NotAllowedByListeners, NoMatchingListenerHostname)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xds_server.model.gateway.listeners import Listener
from xds_server.model.gateway.rules import Compiled
from xds_server.model.gateway.types import (
    GROUP,
    GatewayPart,
    GatewayRoute,
    Named,
    Status,
    condition,
    generation_of,
    spec_of,
    status_key,
)
from xds_server.sources.objects import KubeObject


@dataclass
class Acceptance:
    attached: list[tuple[Listener, list[str]]]
    reason: str
    message: str

    @property
    def ok(self) -> bool:
        return bool(self.attached)


@dataclass(frozen=True)
class Plan:
    """Where a route attaches (by Gateway and listener index, with the hostnames it serves
    there) and its status: what `attach` does, reusable while neither the route nor any
    Gateway, GatewayClass or Namespace changed."""

    attachments: tuple[tuple[Named, int, tuple[str, ...]], ...]
    status: Status | None


def plan(
    route: KubeObject,
    compiled: Compiled,
    listeners: dict[Named, list[Listener]],
    namespaces: dict[str, dict[str, str]],
    controller: str,
) -> Plan:
    """Where the route (compiled) attaches, and its status: one entry per parentRef of
    ours (another controller's Gateways are left to it)."""
    spec = spec_of(route)
    gen = generation_of(route)
    hostnames = [str(h).lower() for h in spec.get("hostnames") or []]
    parents = []
    attachments: list[tuple[Named, int, tuple[str, ...]]] = []
    for parent in spec.get("parentRefs") or []:
        if not isinstance(parent, dict) or parent.get("group", GROUP) != GROUP:
            continue
        if parent.get("kind", "Gateway") != "Gateway":
            continue
        named = (str(parent.get("namespace") or route.namespace), str(parent.get("name")))
        if named not in listeners:
            continue  # not one of ours
        accepted = _accept(route, parent, listeners[named], hostnames, namespaces)
        if compiled.routes is None and accepted.ok:
            accepted = Acceptance([], "UnsupportedValue", compiled.unsupported)
        own = listeners[named]
        for listener, hosts in accepted.attached:
            index = next(i for i, x in enumerate(own) if x is listener)
            attachments.append((named, index, tuple(hosts)))
        ok, reason, message = compiled.resolved
        parents.append(
            {
                "parentRef": parent,
                "controllerName": controller,
                "conditions": [
                    condition("Accepted", accepted.ok, accepted.reason, accepted.message, gen),
                    condition("ResolvedRefs", ok, reason, message, gen),
                ],
            }
        )
    return Plan(tuple(attachments), {"parents": parents} if parents else None)


def attach(
    route: KubeObject,
    compiled: Compiled,
    made: Plan,
    listeners: dict[Named, list[Listener]],
    part: GatewayPart,
) -> None:
    """Carry a plan out: count the route on its listeners, add its routes to their hosts."""
    for named, index, hosts in made.attachments:
        listener = listeners[named][index]
        listener.attached += 1
        _add_routes(compiled.routes or [], listener, list(hosts))
    if made.status is not None:
        part.status[status_key(route)] = made.status


def _accept(
    route: KubeObject,
    parent: dict[str, Any],
    candidates: list[Listener],
    hostnames: list[str],
    namespaces: dict[str, dict[str, str]],
) -> Acceptance:
    named = [
        x
        for x in candidates
        if (parent.get("sectionName") in (None, x.name)) and (parent.get("port") in (None, x.port))
    ]
    if not named:
        return Acceptance([], "NoMatchingParent", "no listener matches sectionName/port")
    allowed = [x for x in named if x.accepted and x.kinds and _allows(x, route, namespaces)]
    if not allowed:
        return Acceptance(
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
        return Acceptance(
            [], "NoMatchingListenerHostname", "no hostname intersects the listeners' hostnames"
        )
    return Acceptance(attached, "Accepted", "attached")


def _allows(listener: Listener, route: KubeObject, namespaces: dict[str, dict[str, str]]) -> bool:
    policy = (listener.spec.get("allowedRoutes") or {}).get("namespaces") or {}
    origin = policy.get("from", "Same")
    if origin == "All":
        return True
    if origin == "Same":
        return route.namespace == listener.gateway.namespace
    if origin == "Selector":
        return selects(policy.get("selector") or {}, namespaces.get(route.namespace, {}))
    return False


Requirement = Callable[[bool, str | None, list[str]], bool]
"""(key present, its value, the expression's values) -> the requirement holds."""
OPERATORS: dict[str, Requirement] = {
    "In": lambda present, value, values: present and value in values,
    "NotIn": lambda present, value, values: not present or value not in values,
    "Exists": lambda present, _value, _values: present,
    "DoesNotExist": lambda present, _value, _values: not present,
}
"""Kubernetes' label selector operators, with the values each requires (below)."""


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions). One the API server
    would not parse (an unknown operator such as `in`, values where none belong or none
    where they must be) selects nothing, as it selects nothing there: never everything."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(str(key)) != str(value):
            return False
    for expression in selector.get("matchExpressions") or []:
        operator = OPERATORS.get(expression.get("operator"))
        values = [str(v) for v in expression.get("values") or []]
        if operator is None or bool(values) != (expression["operator"] in ("In", "NotIn")):
            return False
        key = str(expression.get("key"))
        if not operator(key in labels, labels.get(key), values):
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
        if host == listener or covers(listener, host):
            found.append(host)
        elif covers(host, listener):
            found.append(listener)
    return list(dict.fromkeys(found))


def covers(wildcard: str, host: str) -> bool:
    return (
        wildcard.startswith("*.") and host.endswith(wildcard[1:]) and len(host) > len(wildcard) - 1
    )


def _add_routes(compiled: list[GatewayRoute], listener: Listener, hosts: list[str]) -> None:
    if listener.chain is None:
        return  # attached (and counted), not served: the listener is not programmed
    for host in hosts:
        routes = listener.chain.hosts.setdefault(host, [])
        routes += [r for r in compiled if r not in routes]  # two parentRefs, one listener


def refused_status(route: KubeObject, reason: str, controller: str, ours: set[str]) -> Status:
    """The status of a route left out because Envoy would refuse what it asks for: Accepted
    False on each of our Gateways it names (`ours`: their status keys)."""
    gen = generation_of(route)
    parents = []
    for parent in spec_of(route).get("parentRefs") or []:
        key = f"Gateway/{parent.get('namespace') or route.namespace}/{parent.get('name')}"
        if parent.get("kind", "Gateway") != "Gateway" or key not in ours:
            continue
        parents.append(
            {
                "parentRef": parent,
                "controllerName": controller,
                "conditions": [
                    condition("Accepted", False, "UnsupportedValue", reason, gen),
                    condition("ResolvedRefs", True, "ResolvedRefs", "not the problem", gen),
                ],
            }
        )
    return {"parents": parents}


def _refused_gateway(gateway: KubeObject, reason: str, _controller: str, _ours: set[str]) -> Status:
    gen = generation_of(gateway)
    return {
        "conditions": [
            condition("Accepted", False, "Invalid", reason, gen),
            condition("Programmed", False, "Invalid", reason, gen),
        ]
    }


REFUSED_STATUS: dict[str, Callable[[KubeObject, str, str, set[str]], Status]] = {
    "HTTPRoute": refused_status,
    "Gateway": _refused_gateway,
}
"""The status of an object left out for what Envoy would refuse in it, by kind."""
