"""The Gateway API objects -> the Gateway part of the model, in one pass: classes, Gateways
and their listeners, then every HTTPRoute oldest first, then the status of each.

Everything here is computed from the objects alone, so the same objects give the same model
and status on every replica.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

from xds_server.model.gateway import refs
from xds_server.model.gateway.attach import Plan, attach, covers, plan
from xds_server.model.gateway.listeners import Listener, addresses, classes, gateway_status
from xds_server.model.gateway.listeners import listeners as listeners_of
from xds_server.model.gateway.rules import Compiled, compile_route
from xds_server.model.gateway.types import (
    GatewayInputs,
    GatewayPart,
    GatewayRoute,
    Named,
    condition,
    generation_of,
    labels_of,
    spec_of,
    status_key,
)
from xds_server.model.ingress import age_order
from xds_server.model.types import Backend, describe
from xds_server.sources.objects import KubeObject


@dataclass
class Memo:
    """One HTTPRoute as last built: its body (kept, so its id stays its own), what it
    compiled to, the upstreams it resolved, and its attachment plan with the identities of
    the objects the plan was made from."""

    body: dict[str, Any]
    compiled: Compiled
    upstreams: dict[str, Backend]
    token: tuple[int, ...] = ()
    plan: Plan | None = None


log = logging.getLogger("xds_server.model")

CompileMemo = dict[int, Memo]
"""HTTPRoutes as last built, by the identity of their body."""


def build_gateways(
    inputs: GatewayInputs,
    services: dict[Named, KubeObject],
    slices: dict[Named, list[dict[str, Any]]],
    secrets: dict[Named, KubeObject] | None = None,
    memo: CompileMemo | None = None,
) -> GatewayPart:
    """The part for these objects. `memo` (kept by the caller between builds, emptied by it
    when Services, slices or ReferenceGrants change) spares compiling again the HTTPRoutes
    that did not change: at 10,000 rules, most of a build's time."""
    part = GatewayPart()
    by_kind: dict[str, list[KubeObject]] = {}
    for obj in inputs.objects.values():
        by_kind.setdefault(obj.kind, []).append(obj)
    ours = classes(
        by_kind.get("GatewayClass", []),
        by_kind.get("CustomResourceDefinition", []),
        inputs.controller,
        part,
    )
    gateways = sorted(
        (g for g in by_kind.get("Gateway", []) if spec_of(g).get("gatewayClassName") in ours),
        key=age_order,
    )
    where = addresses(gateways, inputs)
    namespaces = {
        o.name: labels_of(o) | {"kubernetes.io/metadata.name": o.name}
        for o in by_kind.get("Namespace", [])
    }
    lookup = refs.Lookup(by_kind.get("ReferenceGrant", []), services, slices, secrets or {}, {})
    listeners: dict[Named, list[Listener]] = {}
    broken: dict[Named, tuple[str, str]] = {}
    owners: dict[tuple[str, int], str] | None = None if inputs.merge else {}
    for gateway in gateways:  # oldest first: the oldest holds a contested port
        named = (gateway.namespace, gateway.name)
        unsupported = _parameters(gateway)
        if unsupported is not None:
            broken[named], listeners[named] = ("InvalidParameters", unsupported), []
            continue
        try:  # first into a part of its own: a crash there leaves nothing half-added
            trial = None if owners is None else dict(owners)
            listeners_of(gateway, where[named], lookup, GatewayPart(), inputs.reserved, trial)
        except Exception as exc:  # a shape nobody foresaw: this Gateway only
            broken[named] = ("Invalid", _cannot_be_used(gateway, exc, part))
            found = []
        else:  # Gateways may share ports: made again into the part (listeners are few)
            found = listeners_of(gateway, where[named], lookup, part, inputs.reserved, owners)
        listeners[named] = found
    used: CompileMemo = {}
    token = _attachment_inputs(by_kind)
    for route in sorted(by_kind.get("HTTPRoute", []), key=age_order):
        hit = _compiled(route, lookup, part, memo or {}, used)
        made = hit.plan if hit.token == token else None
        if made is None:
            made = plan(route, hit.compiled, listeners, namespaces, inputs.controller)
            hit.token, hit.plan = token, made
        made = _within_budget(route, hit.compiled, made, inputs.route_budget, part)
        attach(route, hit.compiled, made, listeners, part)
    if memo is not None:
        memo.clear()
        memo.update(used)
    for gateway in gateways:
        named = (gateway.namespace, gateway.name)
        status = gateway_status(gateway, listeners[named], where[named])
        if named in broken:
            reason, message = broken[named]
            status["conditions"] = [
                condition("Accepted", False, reason, message, generation_of(gateway)),
                condition("Programmed", False, "Invalid", message, generation_of(gateway)),
            ]
        part.status[status_key(gateway)] = status
    for port in part.ports.values():
        for chain in port.chains.values():
            chain.hosts = merged(chain.hosts)
    return part


def _compiled(
    route: KubeObject, lookup: refs.Lookup, part: GatewayPart, memo: CompileMemo, used: CompileMemo
) -> Memo:
    """The route compiled, or as it was for the same body; its upstreams put in the part."""
    hit = memo.get(id(route.body))
    if hit is None or hit.body is not route.body:
        own = GatewayPart()
        try:
            compiled = compile_route(route, lookup, own)
        except Exception as exc:  # a shape nobody foresaw: this route only
            reason = _cannot_be_used(route, exc, part)
            compiled = Compiled(None, reason, (False, "UnsupportedValue", reason))
            own = GatewayPart()
        hit = Memo(route.body, compiled, own.upstreams)
    used[id(route.body)] = hit
    part.upstreams.update(hit.upstreams)
    return hit


def _parameters(gateway: KubeObject) -> str | None:
    """Why the Gateway's `infrastructure.parametersRef` cannot be used (no kind of
    parameters is served here), or None when it names none."""
    infrastructure = spec_of(gateway).get("infrastructure") or {}
    ref = infrastructure.get("parametersRef")
    if not ref:
        return None
    return (f"parametersRef {ref.get('group')}/{ref.get('kind')} {ref.get('name')}: no"
            " parameters are supported by this controller")  # fmt: skip


def _within_budget(
    route: KubeObject, compiled: Compiled, made: Plan, budget: int, part: GatewayPart
) -> Plan:
    """The plan, or none when the route would become more Envoy routes than `budget` (every
    proxy of the fleet holds them all: one object must not be able to exhaust them)."""
    expansion = len(compiled.routes or []) * sum(len(hosts) for *_, hosts in made.attachments)
    if expansion <= budget:
        return made
    reason = (f"would become {expansion} Envoy routes (matches x hostnames x listeners),"
              f" more than --max-routes-per-object {budget}")  # fmt: skip
    part.errors.append(f"{describe(route)}: {reason}")
    parents = copy.deepcopy((made.status or {}).get("parents") or [])
    for parent in parents:
        accepted = parent["conditions"][0]
        if accepted["status"] == "True":
            accepted.update(status="False", reason="UnsupportedValue", message=reason)
    return Plan((), {"parents": parents} if parents else None)


def _cannot_be_used(obj: KubeObject, exc: Exception, part: GatewayPart) -> str:
    """The isolation boundary of one object: logged with its traceback (a bug of ours, or a
    shape the schema let through), rejected alone, said in its status."""
    log.exception("model: %s", describe(obj))
    reason = f"cannot be used ({type(exc).__name__}: {exc})"
    part.errors.append(f"{describe(obj)}: {reason}")
    return reason


def _attachment_inputs(by_kind: dict[str, list[KubeObject]]) -> tuple[int, ...]:
    """What every route's attachment depends on besides the route itself: the Gateways,
    GatewayClasses and Namespaces, by body identity (a changed object is a new body)."""
    kinds = ("Gateway", "GatewayClass", "Namespace")
    return tuple(sorted(id(o.body) for kind in kinds for o in by_kind.get(kind, [])))


def merged(hosts: dict[str, list[GatewayRoute]]) -> dict[str, list[GatewayRoute]]:
    """Each host's routes with those of every wider name that covers it (`*.com` covers
    `example.com`; a route without hostnames covers all): precedence is decided across all
    the routes a request could match, and Envoy picks one virtual host, never falls back."""
    found = {}
    wildcards = [h for h in hosts if h.startswith("*")]  # only these cover other names
    for host in hosts:
        wider = [h for h in wildcards if h != host and (h == "*" or covers(h, host))]
        if not wider:
            found[host] = sorted(hosts[host], key=lambda r: r.rank)
            continue
        routes = [r for h in (host, *wider) for r in hosts[h]]
        found[host] = sorted(dict.fromkeys(routes), key=lambda r: r.rank)
    return found
