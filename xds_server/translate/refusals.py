"""What Envoy would refuse among the resources about to be published, and whom to blame.

A resource that breaks one of Envoy's rules would be NACKed by every proxy, and with it
whatever else came in the same response. Each violation is traced back to the object it
comes from (a route to its Ingress, a filter chain to the Ingress that asked for its TLS
binding, a secret to its Secret) so that object alone can be rejected and the rest served.
A violation no object explains (a flag, or our own bug) stops the snapshot instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from google.protobuf.message import Message

from xds_server.model.types import Host, Model
from xds_server.translate.envoy_rules import Checked
from xds_server.translate.listeners import HTTP, HTTPS
from xds_server.translate.routes import planned
from xds_server.translate.type_urls import LISTENER, SECRET, VHOST

_ROUTE = re.compile(r"^routes\[(\d+)\]")
_CHAIN = re.compile(r"^filter_chains\[(\d+)\]")


@dataclass
class Refusals:
    blamed: dict[str, str] = field(default_factory=dict)
    """Object (as rejections name it) -> the first reason Envoy would give."""
    unexplained: list[str] = field(default_factory=list)


def refusals(model: Model, translated: dict[str, dict[str, Message]], checked: Checked) -> Refusals:
    hosts = {f"{config}/{h.name}": h for config in (HTTP, HTTPS) for h in model.hosts.values()}
    found = Refusals()
    for type_url, messages in translated.items():
        kind = type_url.rsplit(".", 1)[-1]
        for name, message in messages.items():
            for violation in checked.of(message):
                reason = f"Envoy would refuse {kind} {name}: {violation}"
                origins = _origins(type_url, name, violation, model, hosts)
                for origin in origins:
                    found.blamed.setdefault(origin, reason)
                if not origins:
                    found.unexplained.append(reason)
    return found


def _origins(
    type_url: str, name: str, violation: str, model: Model, hosts: dict[str, Host]
) -> list[str]:
    if type_url == VHOST and name in hosts:
        host = hosts[name]
        routes = [r for r, _ in planned(host, model.hosts.get("*") if host.wildcard else None)]
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
