"""What Envoy would refuse among the resources about to be published, and whom to blame.

A resource that breaks one of Envoy's rules would be NACKed by every proxy, and with it
whatever else came in the same response. Each violation is traced back to the object it
comes from (a route to its Ingress, a filter chain to the Ingress that asked for its TLS
binding, a secret to its Secret) so that object alone can be rejected and the rest served.
Routes are counted as Envoy gets them (a route split for its retries is two, retries.py).
A violation no object explains (a flag, or our own bug) stops the snapshot instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from google.protobuf.message import Message

from xds_server.model.gateway.types import GatewayPart
from xds_server.model.types import Model
from xds_server.translate.envoy_rules import Checked
from xds_server.translate.gateway import chain_order
from xds_server.translate.gateway import retry_of as gateway_retry_of
from xds_server.translate.listeners import HTTP, HTTPS
from xds_server.translate.retries import variants
from xds_server.translate.routes import planned, retry_of
from xds_server.translate.type_urls import LISTENER, SECRET, VHOST

_ROUTE = re.compile(r"^routes\[(\d+)\]")
_CHAIN = re.compile(r"^filter_chains\[(\d+)\]")


@dataclass
class Refusals:
    blamed: dict[str, str] = field(default_factory=dict)
    """Object (as rejections name it) -> the first reason Envoy would give."""
    unexplained: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    """(type URL, name) -> what Envoy would refuse in it that no object explains."""


def refusals(
    model: Model, translated: Mapping[str, Mapping[str, Message | None]], checked: Checked
) -> Refusals:
    """What Envoy would refuse in the given resources (None: removed, nothing to judge)."""
    found = Refusals()
    for type_url, messages in translated.items():
        kind = type_url.rsplit(".", 1)[-1]
        for name, message in messages.items():
            for violation in checked.of(message) if message is not None else ():
                reason = f"Envoy would refuse {kind} {name}: {violation}"
                origins = _origins(type_url, name, violation, model)
                for origin in origins:
                    found.blamed.setdefault(origin, reason)
                if not origins:
                    found.unexplained.setdefault((type_url, name), []).append(reason)
    return found


def _origins(type_url: str, name: str, violation: str, model: Model) -> list[str]:
    gateway = _gateway_origins(type_url, name, violation, model)
    if gateway is not None:
        return gateway
    config, _, host_name = name.partition("/")
    host = model.hosts.get(host_name) if config in (HTTP, HTTPS) else None
    if type_url == VHOST and host is not None:
        planned_routes = planned(host, model.hosts.get("*") if host.wildcard else None)
        routes = [r for r, _ in planned_routes for _ in variants(retry_of(r), None)]
        route = _ROUTE.match(violation)
        if route and routes[int(route[1])] is not None:
            return [routes[int(route[1])].origin]  # type: ignore[union-attr]
        return list(dict.fromkeys(r.origin for r in routes if r is not None))  # all of them
    if type_url == LISTENER and name == HTTPS:
        chain = _CHAIN.match(violation)
        if chain and int(chain[1]) < len(model.tls):
            return [model.tls[int(chain[1])].origin]
    if type_url == SECRET and name in model.secrets:
        return [model.secrets[name].origin]
    return []


def _gateway_origins(type_url: str, name: str, violation: str, model: Model) -> list[str] | None:
    """The HTTPRoutes of a Gateway API virtual host (the one whose route broke the rule, or
    all of them), the Secret of an SDS secret; None: not a Gateway API resource."""
    part = model.gateway
    if part is None:
        return None
    if type_url == SECRET and name in part.secrets:
        return [part.secrets[name].origin]
    if type_url == LISTENER:
        return _gateway_listener_origins(name, violation, part)
    if type_url != VHOST:
        return None
    config, _, host = name.partition("/")
    for port in part.ports.values():
        for chain in port.chains.values():
            if chain.name == config and host in chain.hosts:
                routes = [
                    r
                    for r in chain.hosts[host]
                    for _ in variants(gateway_retry_of(r), r.match.method)
                ]
                route = _ROUTE.match(violation)
                if route and int(route[1]) < len(routes):
                    return [routes[int(route[1])].origin]
                return list(dict.fromkeys(r.origin for r in routes))
    return None


def _gateway_listener_origins(name: str, violation: str, part: GatewayPart) -> list[str] | None:
    """The Gateways of the filter chain that broke the rule (of every chain of the port when
    the violation names none); None: not a Gateway API listener."""
    port = next((p for p in part.ports.values() if p.name == name), None)
    if port is None:
        return None
    chains = chain_order(port)
    chain = _CHAIN.match(violation)
    if chain and int(chain[1]) < len(chains):
        return list(chains[int(chain[1])].origins)
    return list(dict.fromkeys(o for c in chains for o in c.origins))
