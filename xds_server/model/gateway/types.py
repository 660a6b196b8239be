"""What the Gateway API part of the model is made of: routes compiled for Envoy, grouped by
the address, port and filter chain that serve them, and the status of every object."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from xds_server.model.types import Backend, RetrySettings, TlsSecret
from xds_server.sources.objects import KubeObject

GROUP = "gateway.networking.k8s.io"
DEFAULT_CONTROLLER = "envoy-lifecycle.io/gateway-controller"
EXACT, PREFIX, REGEX = "Exact", "PathPrefix", "RegularExpression"

Named = tuple[str, str]
Status = dict[str, Any]


@dataclass(frozen=True)
class HeaderEdits:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class WeightedBackend:
    cluster: str | None
    """None: a backend that cannot be used (its share answers 500)."""
    weight: int
    request_headers: HeaderEdits = HeaderEdits()
    """The backendRef's own RequestHeaderModifier: only requests sent to it get these."""


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
class Mirror:
    cluster: str
    percent: float = 100.0


@dataclass(frozen=True)
class Match:
    """What one match of a rule asks of a request (headers and query as (type, name, value))."""

    path: str = "/"
    path_kind: str = PREFIX
    method: str | None = None
    headers: tuple[tuple[str, str, str], ...] = ()
    query: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class GatewayRoute:
    """One match of one rule of one HTTPRoute, on one host of one listener."""

    match: Match
    backends: tuple[WeightedBackend, ...]
    request_headers: HeaderEdits
    response_headers: HeaderEdits
    redirect: Redirect | None
    rewrite: Rewrite | None
    mirrors: tuple[Mirror, ...]
    timeout_ms: int | None
    """The rule's request timeout (the shorter of request and backendRequest); None: none."""
    rank: tuple[Any, ...]
    origin: str
    retry: RetrySettings = field(default_factory=RetrySettings)

    @property
    def fails(self) -> bool:
        """Every backend is invalid or weighs 0: the rule answers 500."""
        return self.redirect is None and not any(
            b.cluster is not None and b.weight > 0 for b in self.backends
        )


@dataclass
class Chain:
    """One filter chain of a port: the only one of an HTTP port, or one per SNI name of an
    HTTPS port (None: the chain for every other name). Each has its own route
    configuration, so a TLS connection only reaches the routes of the listener its SNI
    chose, as the spec asks."""

    name: str
    sni: str | None = None
    certificates: tuple[str, ...] = ()
    """SDS secret names (HTTPS); empty for HTTP."""
    hosts: dict[str, list[GatewayRoute]] = field(default_factory=dict)
    origins: list[str] = field(default_factory=list)
    """The Gateways whose listeners made it (as rejections name them): what Envoy would
    refuse in the chain is theirs."""


@dataclass
class Port:
    """What Envoy serves on one address and port."""

    address: str
    port: int
    tls: bool
    chains: dict[str | None, Chain] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"gateway_{self.address}_{self.port}"

    def chain(self, sni: str | None, certificates: tuple[str, ...]) -> Chain:
        """The chain for an SNI name (the first listener's certificates keep it)."""
        key = sni if self.tls else None
        if key not in self.chains:
            name = self.name if not self.tls else f"{self.name}_{key or 'default'}"
            self.chains[key] = Chain(name, key, certificates if self.tls else ())
        return self.chains[key]


@dataclass
class GatewayPart:
    ports: dict[tuple[str, int], Port] = field(default_factory=dict)
    upstreams: dict[str, Backend] = field(default_factory=dict)
    secrets: dict[str, TlsSecret] = field(default_factory=dict)
    """SDS secrets by name (`gateway/<namespace>/<name>`)."""
    status: dict[str, Status] = field(default_factory=dict)
    """`Kind/namespace/name` (`Kind/name` when cluster-scoped) -> the object's status."""
    errors: list[str] = field(default_factory=list)


ROUTE_BUDGET = 4096
"""Envoy routes one HTTPRoute may become, over all its parents and hostnames: 16 hostnames
of 64 matches each fit; 32 parentRefs x 16 hostnames x 128 matches (65,536 routes, an Envoy
grown from 69 to 1,285 MiB by one 25 KiB object) does not."""


@dataclass(frozen=True)
class GatewaySettings:
    """The serve flags of the Gateway API part."""

    controller: str = DEFAULT_CONTROLLER
    pool: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    envoy_address: str = "0.0.0.0"
    reserved: tuple[tuple[str, int], ...] = ()
    """(address, port) Envoy already listens on for Ingress: a Gateway listener there is
    PortUnavailable (Envoy would refuse the second socket, and the update with it)."""
    merge: bool = False
    """--merge-gateways: Gateways on one address share ports instead of being kept apart."""
    route_budget: int = ROUTE_BUDGET
    """--max-routes-per-object."""


@dataclass
class GatewayInputs:
    objects: Mapping[tuple[str, str, str], KubeObject]
    controller: str = DEFAULT_CONTROLLER
    pool: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    envoy_address: str = "0.0.0.0"
    reserved: tuple[tuple[str, int], ...] = ()
    merge: bool = False
    """Gateways on one address may share a port (their listeners merged); by default the
    oldest holds it and the others' listeners there are PortUnavailable."""
    route_budget: int = ROUTE_BUDGET


def spec_of(obj: KubeObject) -> dict[str, Any]:
    spec = obj.body.get("spec")
    return spec if isinstance(spec, dict) else {}


def labels_of(obj: KubeObject) -> dict[str, str]:
    labels = (obj.body.get("metadata") or {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def generation_of(obj: KubeObject) -> int:
    value = (obj.body.get("metadata") or {}).get("generation")
    return int(value) if isinstance(value, int) else 1


def status_key(obj: KubeObject, cluster_scoped: bool = False) -> str:
    return f"{obj.kind}/{obj.name}" if cluster_scoped else f"{obj.kind}/{obj.namespace}/{obj.name}"


def condition(kind: str, ok: bool, reason: str, message: str, generation: int) -> Status:
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }
