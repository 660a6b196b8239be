"""GatewayClasses, Gateways and their listeners: which are ours, at which address each
Gateway is served, which listeners can be served (protocol, conflicts, certificates) and
on which Envoy port and filter chain, and the status of each."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from xds_server.model.gateway import refs
from xds_server.model.gateway.types import (
    GROUP,
    Chain,
    GatewayInputs,
    GatewayPart,
    Named,
    Port,
    Status,
    condition,
    generation_of,
    spec_of,
    status_key,
)
from xds_server.model.types import describe
from xds_server.sources.objects import KubeObject

SERVED_PROTOCOLS = ("HTTP", "HTTPS")
CLASS_CRD = "gatewayclasses.gateway.networking.k8s.io"
BUNDLE_VERSION = "gateway.networking.k8s.io/bundle-version"
VERSION = re.compile(r"^v(\d+)\.(\d+)\.(\d+)(?:-[0-9A-Za-z.-]+)?$")
SUPPORTED_VERSIONS = {(1, minor) for minor in range(7)}
ROUTE_KIND = {"group": GROUP, "kind": "HTTPRoute"}

Conditions = dict[str, tuple[bool, str, str]]


@dataclass
class Listener:
    gateway: KubeObject
    spec: dict[str, Any]
    address: str
    kinds: list[dict[str, str]]
    conditions: Conditions
    certificates: tuple[str, ...] = ()
    chain: Chain | None = None
    """Where its routes go; None: not served (routes may still attach: the spec counts
    them, and they are served once the listener is, say its certificate appears)."""
    attached: int = 0

    @property
    def name(self) -> str:
        return str(self.spec.get("name", ""))

    @property
    def port(self) -> int:
        return int(self.spec.get("port", 0))

    @property
    def protocol(self) -> str:
        return str(self.spec.get("protocol", ""))

    @property
    def hostname(self) -> str | None:
        value = self.spec.get("hostname")
        return str(value).lower() if value else None

    @property
    def accepted(self) -> bool:
        return self.conditions["Accepted"][0]


def classes(
    objects: list[KubeObject], crds: list[KubeObject], controller: str, part: GatewayPart
) -> set[str]:
    """Our GatewayClasses (by controllerName), each Accepted, with SupportedVersion."""
    ours = set()
    version = _supported_version(crds)
    for obj in objects:
        if spec_of(obj).get("controllerName") != controller:
            continue
        ours.add(obj.name)
        gen = generation_of(obj)
        part.status[status_key(obj, cluster_scoped=True)] = {
            "conditions": [
                condition("Accepted", True, "Accepted", "served by envoy-lifecycle", gen),
                condition("SupportedVersion", *version, gen),
            ]
        }
    return ours


def _supported_version(crds: list[KubeObject]) -> tuple[bool, str, str]:
    """The installed Gateway API's version, from the GatewayClass CRD's bundle-version
    annotation: v1.0 to v1.6 are served. Without the CRD among the objects (manifests
    without CRDs), nothing contradicts the v1 objects read."""
    crd = next((c for c in crds if c.name == CLASS_CRD), None)
    if crd is None:
        return (True, "SupportedVersion", "no Gateway API CRD to check: v1 objects read")
    annotations = (crd.body.get("metadata") or {}).get("annotations") or {}
    found = str(annotations.get(BUNDLE_VERSION, ""))
    match = VERSION.match(found)
    if match is None:
        return (False, "UnsupportedVersion", f"the CRDs carry no {BUNDLE_VERSION} version")
    if (int(match[1]), int(match[2])) not in SUPPORTED_VERSIONS:
        return (False, "UnsupportedVersion", f"Gateway API {found} is not served (v1.0-v1.6)")
    return (True, "SupportedVersion", f"Gateway API {found}")


def addresses(gateways: list[KubeObject], inputs: GatewayInputs) -> dict[Named, str]:
    """Each Gateway's address: its own IPAddress, else a pool address picked from a hash of
    its namespace/name (the same on every replica and after restarts; the next free one on a
    collision, in namespace/name order), else the Envoy address."""
    found: dict[Named, str] = {}
    taken: set[str] = set()
    pending = []
    for gateway in sorted(gateways, key=lambda g: (g.namespace, g.name)):
        asked = [
            a
            for a in spec_of(gateway).get("addresses") or []
            if isinstance(a, dict) and a.get("type", "IPAddress") == "IPAddress"
        ]
        if asked and asked[0].get("value"):
            found[(gateway.namespace, gateway.name)] = str(asked[0]["value"])
            taken.add(found[(gateway.namespace, gateway.name)])
        else:
            pending.append(gateway)
    for gateway in pending:
        found[(gateway.namespace, gateway.name)] = _pool_address(gateway, inputs, taken)
    return found


def _pool_address(gateway: KubeObject, inputs: GatewayInputs, taken: set[str]) -> str:
    pool = inputs.pool
    if pool is None or pool.num_addresses < 3:
        return inputs.envoy_address
    size = pool.num_addresses - 2  # no network or broadcast address
    digest = hashlib.sha256(f"{gateway.namespace}/{gateway.name}".encode()).digest()
    start = int.from_bytes(digest[:8], "big") % size
    for step in range(size):
        address = str(pool.network_address + 1 + (start + step) % size)
        if address not in taken:
            taken.add(address)
            return address
    return inputs.envoy_address


def listeners(
    gateway: KubeObject,
    address: str,
    lookup: refs.Lookup,
    part: GatewayPart,
    reserved: tuple[tuple[str, int], ...] = (),
    owners: dict[tuple[str, int], str] | None = None,
) -> list[Listener]:
    """The Gateway's listeners, each given its Envoy port and chain when it can be served.
    `owners` (address, port -> the Gateway serving there; None: Gateways may share ports)
    keeps Gateways apart: one Gateway's listener on a port an older Gateway serves would
    take that Gateway's traffic (its hosts, its SNI chains), so it is PortUnavailable."""
    items = [x for x in spec_of(gateway).get("listeners") or [] if isinstance(x, dict)]
    found = [_listener(gateway, spec, address, lookup, part) for spec in items]
    _conflicts(found)
    me = f"{gateway.namespace}/{gateway.name}"
    for listener in found:
        if any(_overlaps(listener, taken) for taken in reserved):
            _refuse(listener, "PortUnavailable", "Envoy serves Ingress on this port")
        held = [o for k, o in (owners or {}).items() if o != me and _overlaps(listener, k)]
        if held:
            why = f"Gateway {held[0]} serves this address and port (Gateways are kept apart"
            _refuse(listener, "PortUnavailable", why + "; --merge-gateways lets them share)")
        _place(listener, part)
        if owners is not None and listener.chain is not None:
            owners.setdefault((listener.address, listener.port), me)
    return found


def _overlaps(listener: Listener, taken: tuple[str, int]) -> bool:
    address, port = taken
    wildcard = ("0.0.0.0", "::")
    return port == listener.port and (
        address in wildcard or listener.address in wildcard or address == listener.address
    )


def _listener(
    gateway: KubeObject,
    spec: dict[str, Any],
    address: str,
    lookup: refs.Lookup,
    part: GatewayPart,
) -> Listener:
    protocol = spec.get("protocol")
    conditions: Conditions = {
        "Accepted": (True, "Accepted", "listener accepted"),
        "ResolvedRefs": (True, "ResolvedRefs", "references resolved"),
        "Programmed": (True, "Programmed", f"served at {address}:{spec.get('port')}"),
        "Conflicted": (False, "NoConflicts", "no conflict"),
    }
    made = Listener(gateway, spec, address, [ROUTE_KIND], conditions)
    if protocol not in SERVED_PROTOCOLS:
        _refuse(made, "UnsupportedProtocol", f"protocol {protocol} is not served")
        made.kinds = []
        return made
    _route_kinds(made)
    if protocol == "HTTPS":
        _certificates(made, lookup, part)
    return made


def _refuse(listener: Listener, reason: str, message: str) -> None:
    listener.conditions["Accepted"] = (False, reason, message)
    listener.conditions["Programmed"] = (False, "Invalid", "not served")


def _route_kinds(listener: Listener) -> None:
    asked = (listener.spec.get("allowedRoutes") or {}).get("kinds")
    if not isinstance(asked, list) or not asked:
        return
    wanted = [k for k in asked if isinstance(k, dict)]
    valid = [k for k in wanted if k.get("kind") == "HTTPRoute" and k.get("group", GROUP) == GROUP]
    listener.kinds = [ROUTE_KIND] if valid else []
    if len(valid) != len(wanted):
        listener.conditions["ResolvedRefs"] = (
            False,
            "InvalidRouteKinds",
            "only HTTPRoute is supported",
        )


def _certificates(listener: Listener, lookup: refs.Lookup, part: GatewayPart) -> None:
    """An HTTPS listener terminates TLS with the certificates its refs resolve to; any bad
    ref is reported, and with none left the listener is not served."""
    tls = listener.spec.get("tls") or {}
    if tls.get("mode", "Terminate") != "Terminate":
        _refuse(listener, "UnsupportedProtocol", "HTTPS listeners terminate TLS (mode Terminate)")
        return
    found, problem = [], None
    for number, ref in enumerate(tls.get("certificateRefs") or []):
        where = f"listener {listener.name}: tls.certificateRefs[{number}]"
        name, issue = refs.certificate(listener.gateway, ref, lookup, part, where)
        if name is not None:
            found.append(name)
        problem = problem or issue
    if not found and problem is None:
        problem = ("InvalidCertificateRef", f"listener {listener.name}: no certificateRefs")
    if problem is not None:
        listener.conditions["ResolvedRefs"] = (False, *problem)
    if not found:
        listener.conditions["Programmed"] = (False, "Invalid", "no usable certificate")
    listener.certificates = tuple(found)


def _conflicts(listeners: list[Listener]) -> None:
    by_port: dict[int, list[Listener]] = {}
    for listener in listeners:
        by_port.setdefault(listener.port, []).append(listener)
    for same in by_port.values():
        if len({x.protocol for x in same}) > 1:
            for listener in same:
                _conflicted(listener, "ProtocolConflict", "other protocols on this port")
            continue
        seen: dict[str | None, Listener] = {}
        for listener in same:
            if listener.hostname in seen:
                for other in (listener, seen[listener.hostname]):
                    _conflicted(other, "HostnameConflict", "same port and hostname")
            seen.setdefault(listener.hostname, listener)


def _conflicted(listener: Listener, reason: str, message: str) -> None:
    """Neither of two conflicting listeners is served, nor takes routes (the suite's
    GatewayListenerProtocolAndRouteKindConflicts: Accepted False, reason Invalid)."""
    listener.conditions["Conflicted"] = (True, reason, message)
    listener.conditions["Accepted"] = (False, "Invalid", f"conflicted: {message}")
    listener.conditions["Programmed"] = (False, "Invalid", "conflicted")


def _place(listener: Listener, part: GatewayPart) -> None:
    """The Envoy port and chain of a listener that can be served. Gateways sharing an
    address (the Envoy address) share its ports: the first to take a port decides whether
    it is HTTP or HTTPS; a listener of the other protocol there is PortUnavailable."""
    ok = listener.conditions
    if not (ok["Accepted"][0] and ok["Programmed"][0]):
        return
    tls = listener.protocol == "HTTPS"
    key = (listener.address, listener.port)
    port = part.ports.setdefault(key, Port(listener.address, listener.port, tls))
    if port.tls != tls:
        _refuse(listener, "PortUnavailable", "another Gateway serves another protocol here")
        return
    listener.chain = port.chain(listener.hostname, listener.certificates)
    origin = describe(listener.gateway)
    if origin not in listener.chain.origins:
        listener.chain.origins.append(origin)


def _gateway_accepted(listeners: list[Listener], generation: int) -> Status:
    """Accepted while any listener is; ListenersNotValid names that some are not."""
    refused = [x.name for x in listeners if not x.accepted]
    if not refused:
        return condition("Accepted", True, "Accepted", "every listener accepted", generation)
    ok = len(refused) < len(listeners)
    message = f"listeners not accepted: {', '.join(refused)}"
    return condition("Accepted", ok, "ListenersNotValid", message, generation)


def gateway_status(gateway: KubeObject, listeners: list[Listener], address: str) -> Status:
    gen = generation_of(gateway)
    programmed = any(x.chain is not None for x in listeners)
    return {
        "addresses": [{"type": "IPAddress", "value": address}],
        "conditions": [
            _gateway_accepted(listeners, gen),
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
