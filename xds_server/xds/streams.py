"""What one proxy's stream sends and when, for both flavours (what to send is the snapshot's
business; the gRPC side is server.py):

* Order, make before break: clusters, endpoints, secrets, listeners, routes. Routes are held
  until the proxy has ACKed every cluster they use and that cluster's endpoints (a warming
  cluster is unknown to Envoy's router: 503). A cluster that routes the proxy has ACKed still
  use is kept (and its endpoints) until a route update without it is ACKed, then removed.
* Nothing is sent when nothing changed for that proxy; versions are content hashes.
* NACKs (`error_detail`) are logged and counted per node; the rejected version is parked,
  never re-sent, until the input changes.
* SotW: stale nonces get no answer; listeners and clusters carry the full set. Delta: only
  what changed plus `removed_resources`; subscription changes are honoured whatever nonce.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from xds_server.metrics import XdsMetrics
from xds_server.translate.type_urls import CLUSTER, ENDPOINT, LISTENER, ROUTE, ROUTE_VHDS, VHOST
from xds_server.xds.cache import (
    Entry,
    Snapshot,
    SnapshotStore,
    clusters_used,
    route_entry,
    type_version,
)
from xds_server.xds.order import PUSH_ORDER

WILDCARD_TYPES = {LISTENER, CLUSTER, VHOST}
log = logging.getLogger("xds_server.ads")
NACK_REASON_CHARS = 4000
"""Longest NACK reason logged: enough for a listener's full error, bounded per line."""
_nonces = itertools.count(1)


@dataclass
class TypeState:
    """One resource type on one stream."""

    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    open_request: bool = False
    nonce: str = ""
    sent: dict[str, str] = field(default_factory=dict)  # name -> version sent (pending ACK)
    acked: dict[str, str] = field(default_factory=dict)  # name -> version the proxy has
    acked_entries: dict[str, Entry] = field(default_factory=dict)
    sent_entries: dict[str, Entry] = field(default_factory=dict)
    parked: set[tuple[str, str]] = field(default_factory=set)  # NACKed (name, version)
    probes: list[list[tuple[str, str]]] = field(default_factory=list)
    """Groups of (name, version) from a NACKed response, tried apart to find which one the
    proxy refuses (halving: about 2·log2(n) round trips for one bad among n). Delta: of the
    type's resources; SotW route configurations: of their virtual hosts."""
    sent_vhosts: Mapping[str, Entry] = field(default_factory=dict)  # SotW routes: sent
    acked_vhosts: Mapping[str, Entry] = field(default_factory=dict)  # SotW routes: it has
    parked_version: str | None = None  # SotW: a NACKed type version
    acked_version: str | None = None  # SotW: the type version the proxy has
    resumed_version: str | None = None
    """SotW: the version a reconnecting proxy said it has, before there was a snapshot to
    compare it with (judged at the first push)."""
    responded: bool = False  # the first request of a type is always answered, even if empty
    subscribed_seen: bool = False
    clean: bool = False  # the last push found nothing to send and nothing is awaiting an ACK


class Stream:
    """Shared bookkeeping of one proxy's stream (both flavours)."""

    route_key = ROUTE
    """Where its route configurations come from in a snapshot: full ones (SotW), or ones
    whose virtual hosts come over VHDS (delta)."""

    def __init__(self, store: SnapshotStore, metrics: XdsMetrics) -> None:
        self.store = store
        self.metrics = metrics
        self.node = "?"
        self.types: dict[str, TypeState] = {t: TypeState() for t in PUSH_ORDER}
        self.out: asyncio.Queue[Any] = asyncio.Queue()
        self.pushed_serial = -1
        """The snapshot the last push looked at: `clean` flags speak of that one."""

    def retained_clusters(self) -> set[str]:
        """Clusters the proxy's ACKed routes (and virtual hosts) still send traffic to."""
        acked = [
            *self.types[ROUTE].acked_entries.values(),
            *self.types[VHOST].acked_entries.values(),
        ]
        return clusters_used(acked)

    def source(self, type_url: str, snapshot: Snapshot) -> Mapping[str, Entry]:
        return snapshot.entries(self.route_key if type_url == ROUTE else type_url)

    def wanted(self, type_url: str, snapshot: Snapshot) -> dict[str, Entry]:
        state = self.types[type_url]
        entries = dict(self.source(type_url, snapshot))
        if type_url in (CLUSTER, ENDPOINT):
            for name in self.retained_clusters() - set(entries):
                kept = self.types[type_url].acked_entries.get(name)
                if kept is not None:
                    entries[name] = kept
        if state.wildcard:
            return entries
        return {name: entry for name, entry in entries.items() if name in state.names}

    def ready_for(self, type_url: str, entries: dict[str, Entry]) -> bool:
        """Routes wait until the proxy has ACKed every cluster they use, and its endpoints:
        a cluster still warming is unknown to Envoy's router, which would answer 503."""
        if type_url not in (ROUTE, VHOST):
            return True
        used = clusters_used(entries.values())
        warm = self._has_names(CLUSTER) & self._has_names(ENDPOINT)
        return used <= warm

    def _has_names(self, type_url: str) -> set[str]:
        state = self.types[type_url]
        return set(state.acked) | set(state.acked_entries)

    def converged(self, snapshot: Snapshot) -> bool:
        """The proxy has ACKed everything it subscribed to, as of `snapshot`. Decided by
        the last push's flags, not by comparing thousands of versions per proxy per ACK."""
        if self.pushed_serial != snapshot.serial:
            return False
        return all(state.clean for state in self.types.values() if state.subscribed_seen)

    def push(self, snapshot: Snapshot) -> None:
        """Answer what is open and has changed, type by type in make-before-break order.
        Before the first snapshot there is nothing to say: an empty answer would tell a
        reconnecting proxy to delete everything it has (requests wait for the first one)."""
        if snapshot.serial == 0:
            return
        self.pushed_serial = snapshot.serial
        for type_url in PUSH_ORDER:
            state = self.types[type_url]
            if state.subscribed_seen:  # never asked for: nothing to compute on this hot path
                self._push_type(type_url, state, snapshot)

    def _push_type(self, type_url: str, state: TypeState, snapshot: Snapshot) -> None:
        raise NotImplementedError

    def _count(self, type_url: str, resources: int) -> None:
        kind = type_url.rsplit(".", 1)[-1]
        self.metrics.pushes.labels(kind).inc()
        self.metrics.resources.labels(kind).inc(resources)

    def nack(self, type_url: str, error: status_pb2.Status) -> None:
        kind = type_url.rsplit(".", 1)[-1]
        self.metrics.nacks.labels(kind).inc()
        log.warning(
            "NACK from %s for %s: %s",
            self.node,
            kind,
            reason(error.message),
            extra={"fields": {"node": self.node, "type": kind}},
        )


def reason(message: str) -> str:
    """Envoy's whole rejection on one line, bounded: the first line alone is often just
    `Proto constraint validation failed (...)` without the field that broke it."""
    flat = " | ".join(line.strip() for line in message.splitlines() if line.strip()) or "?"
    return flat if len(flat) <= NACK_REASON_CHARS else flat[:NACK_REASON_CHARS] + "…"


class SotwStream(Stream):
    _assembled: dict[str, Entry] | None = None
    """The virtual hosts of the route configurations `wanted` just assembled, if it did."""

    def handle(self, request: discovery_pb2.DiscoveryRequest, snapshot: Snapshot) -> None:
        if request.node.id:
            self.node = request.node.id
        state = self.types.get(request.type_url)
        if state is None:
            return
        if request.response_nonce and request.response_nonce != state.nonce:
            return  # stale: a newer response is on its way
        if request.HasField("error_detail"):
            self.nack(request.type_url, request.error_detail)
            if not (request.type_url == ROUTE and _split_suspects(state)):
                state.parked_version = type_version(state.sent_entries)
        elif request.response_nonce:
            state.acked_entries = dict(state.sent_entries)
            state.acked_version = type_version(state.acked_entries)
            state.acked_vhosts = state.sent_vhosts
        state.wildcard = request.type_url in WILDCARD_TYPES and not list(request.resource_names)
        state.names = set(request.resource_names)
        state.subscribed_seen = True
        state.open_request = True
        if not request.response_nonce and request.version_info:
            self._resumed(request.type_url, request.version_info, snapshot)
        self.push(snapshot)

    def _resumed(self, type_url: str, version: str, snapshot: Snapshot) -> None:
        """A proxy reconnecting with the version it has: versions are content hashes, so if it
        is the current one there is nothing to send (after a restart, or from a replica)."""
        state = self.types[type_url]
        if snapshot.serial == 0:
            state.resumed_version = version  # nothing to compare with yet
            return
        entries = self.wanted(type_url, snapshot)
        if type_version(entries) == version:
            state.acked_entries = entries
            state.acked_version = version

    def wanted(self, type_url: str, snapshot: Snapshot) -> dict[str, Entry]:
        """Route configurations as the snapshot has them, unless a NACK put some virtual
        hosts in doubt: then assembled for this proxy alone (see `_contained_routes`)."""
        state = self.types[type_url]
        if type_url != ROUTE or not (state.parked or state.probes):
            return super().wanted(type_url, snapshot)
        return self._contained_routes(state, snapshot)

    def _contained_routes(self, state: TypeState, snapshot: Snapshot) -> dict[str, Entry]:
        """Each route configuration from the snapshot's virtual hosts, except that a parked
        one, or a suspect outside the group being tried, is sent as the proxy last ACKed it
        (or not at all if it never had it)."""
        vhosts = snapshot.entries(VHOST)
        state.parked &= {(name, entry.version) for name, entry in vhosts.items()}  # still bad
        group = set(state.probes[0]) if state.probes else set()
        doubtful = state.parked | {pair for probe in state.probes for pair in probe}
        by_config: dict[str, list[Entry]] = {}
        for name, entry in vhosts.items():
            pick: Entry | None = entry
            if (name, entry.version) in doubtful - group:
                pick = state.acked_vhosts.get(name)
            if pick is not None:
                by_config.setdefault(name.split("/", 1)[0], []).append(pick)
        wanted = {
            name: route_entry(name, by_config.get(name, []))
            for name in snapshot.entries(ROUTE_VHDS)
            if state.wildcard or name in state.names
        }
        self._assembled = {v.name: v for vhosts in by_config.values() for v in vhosts}
        return wanted

    def _push_type(self, type_url: str, state: TypeState, snapshot: Snapshot) -> None:
        self._assembled = None
        if state.resumed_version is not None:
            resumed, state.resumed_version = state.resumed_version, None
            self._resumed(type_url, resumed, snapshot)
        entries = self.wanted(type_url, snapshot)
        version = type_version(entries)
        state.clean = version == state.acked_version
        if not state.open_request:
            return
        if version in (state.acked_version, state.parked_version):
            return  # the proxy has it, or rejected exactly this
        if not self.ready_for(type_url, entries):
            return  # sent once the clusters it uses are warm
        state.nonce = str(next(_nonces))
        state.sent_entries = entries
        if type_url == ROUTE:
            state.sent_vhosts = self._sent_vhosts(snapshot)
            if state.probes:
                state.probes.pop(0)
        state.open_request = False
        self._count(type_url, len(entries))
        self.out.put_nowait(
            discovery_pb2.DiscoveryResponse(
                version_info=version,
                resources=[e.resource for e in entries.values()],
                type_url=type_url,
                nonce=state.nonce,
            )
        )

    def _sent_vhosts(self, snapshot: Snapshot) -> Mapping[str, Entry]:
        if self._assembled is not None:
            return self._assembled
        return snapshot.entries(VHOST)  # the snapshot's own mapping: nothing copied


def _split_suspects(state: TypeState) -> bool:
    """After a NACK of route configurations: the virtual hosts that changed since the last
    ACK are the suspects; one alone is the culprit (parked), more are tried in halves.
    False when no virtual host changed (the whole version is parked instead)."""
    suspects = sorted(
        (name, entry.version)
        for name, entry in state.sent_vhosts.items()
        if _version_of(state.acked_vhosts.get(name)) != entry.version
        and (name, entry.version) not in state.parked
    )
    if not suspects:
        return False
    if len(suspects) == 1:
        state.parked |= set(suspects)
    else:
        half = len(suspects) // 2
        state.probes[:0] = [suspects[:half], suspects[half:]]
    return True


_VHOSTS_BY_CONFIGS: dict[frozenset[str], tuple[Snapshot, dict[str, Entry]]] = {}
"""The snapshot's virtual hosts of some route configurations, per set of configurations:
computed once per snapshot for all the proxies that ACKed the same ones (an Envoy without
an HTTPS listener never asks for `ingress_https`), not per proxy and push."""


def _vhosts_of(snapshot: Snapshot, configs: frozenset[str]) -> dict[str, Entry]:
    hit = _VHOSTS_BY_CONFIGS.get(configs)
    if hit is None or hit[0] is not snapshot:
        entries = snapshot.entries(VHOST)
        hit = (snapshot, {n: e for n, e in entries.items() if n.split("/", 1)[0] in configs})
        if len(_VHOSTS_BY_CONFIGS) > 64:
            _VHOSTS_BY_CONFIGS.clear()
        _VHOSTS_BY_CONFIGS[configs] = hit
    return dict(hit[1])


def _version_of(entry: Entry | None) -> str | None:
    return None if entry is None else entry.version


class DeltaStream(Stream):
    route_key = ROUTE_VHDS

    def wanted(self, type_url: str, snapshot: Snapshot) -> dict[str, Entry]:
        """Virtual hosts go out once the proxy has ACKed their route configuration: Envoy
        starts a configuration's VHDS subscription only then, and drops virtual hosts that
        came before it (a route configuration added to a running proxy would stay empty,
        its listener warming)."""
        entries = super().wanted(type_url, snapshot)
        if type_url != VHOST:
            return entries
        acked = self.types[ROUTE].acked
        configs = frozenset(n for n in snapshot.entries(ROUTE_VHDS) if n in acked)
        if len(configs) == len(snapshot.entries(ROUTE_VHDS)):
            return entries  # every configuration ACKed: checked per configuration, not host
        if self.types[VHOST].wildcard:
            return _vhosts_of(snapshot, configs)  # the same for every proxy with these
        return {n: e for n, e in entries.items() if n.split("/", 1)[0] in configs}

    def handle(self, request: discovery_pb2.DeltaDiscoveryRequest, snapshot: Snapshot) -> None:
        if request.node.id:
            self.node = request.node.id
        state = self.types.get(request.type_url)
        if state is None:
            return
        self._subscriptions(request, state, snapshot)
        if request.response_nonce and request.response_nonce == state.nonce:
            if request.HasField("error_detail"):
                self.nack(request.type_url, request.error_detail)
                suspects = sorted((n, v) for n, v in state.sent.items() if v)
                if len(suspects) <= 1:
                    state.parked |= set(suspects)  # the culprit: never re-sent as it is
                else:  # one of them, or more: try each half on its own
                    half = len(suspects) // 2
                    state.probes[:0] = [suspects[:half], suspects[half:]]
            else:
                for name, version in state.sent.items():
                    if version:
                        state.acked[name] = version
                        state.acked_entries[name] = state.sent_entries[name]
                    else:
                        state.acked.pop(name, None)
                        state.acked_entries.pop(name, None)
            state.sent, state.sent_entries = {}, {}
        state.open_request = True
        self.push(snapshot)

    def _subscriptions(
        self, request: discovery_pb2.DeltaDiscoveryRequest, state: TypeState, snapshot: Snapshot
    ) -> None:
        subscribe = set(request.resource_names_subscribe)
        if not state.subscribed_seen and request.type_url in WILDCARD_TYPES and not subscribe:
            state.wildcard = True  # legacy wildcard: an empty first subscription
        state.subscribed_seen = True
        if "*" in subscribe:
            state.wildcard = True
            subscribe.discard("*")
        state.names |= subscribe
        for name in request.resource_names_unsubscribe:
            if name == "*":
                state.wildcard = False
            state.names.discard(name)
            state.acked.pop(name, None)
            state.acked_entries.pop(name, None)
        # A proxy reconnecting (to a restarted server or another replica) says what it has:
        # that counts as ACKed, with the full entry where the content is the current one.
        current = self.source(request.type_url, snapshot)
        for name, version in request.initial_resource_versions.items():
            state.acked.setdefault(name, version)
            entry = current.get(name)
            if entry is not None and entry.version == version:
                state.acked_entries.setdefault(name, entry)

    def _push_type(self, type_url: str, state: TypeState, snapshot: Snapshot) -> None:
        wanted = self.wanted(type_url, snapshot)
        changed = [
            e
            for n, e in wanted.items()
            if state.acked.get(n) != e.version and (n, e.version) not in state.parked
        ]
        removed = [n for n in state.acked if n not in wanted]
        probe = _probe(state, wanted)
        if probe is not None:  # finding a culprit: only its suspects go out, a group at a time
            changed, removed = probe, []
        parked = not changed and any(state.acked.get(n) != e.version for n, e in wanted.items())
        state.clean = not changed and not removed and not state.sent and not parked
        if not state.open_request or state.sent:
            return
        if not self.ready_for(type_url, wanted):
            return  # sent once the clusters it uses are warm
        if not changed and not removed and state.responded:
            return
        state.responded = True
        if probe is not None:
            state.probes.pop(0)
        state.nonce = str(next(_nonces))
        state.sent = {e.name: e.version for e in changed} | {n: "" for n in removed}
        state.sent_entries = {e.name: e for e in changed}
        state.open_request = False
        self._count(type_url, len(changed) + len(removed))
        self.out.put_nowait(
            discovery_pb2.DeltaDiscoveryResponse(
                system_version_info=snapshot.version(
                    self.route_key if type_url == ROUTE else type_url
                ),
                resources=[
                    discovery_pb2.Resource(name=e.name, version=e.version, resource=e.resource)
                    for e in changed
                ],
                removed_resources=removed,
                type_url=type_url,
                nonce=state.nonce,
            )
        )


def _probe(state: TypeState, wanted: dict[str, Entry]) -> list[Entry] | None:
    """The next group of suspects still wanted as they were (a suspect whose content changed
    is new input, judged afresh), or None when no culprit is being looked for."""
    while state.probes:
        group = [
            wanted[name]
            for name, version in state.probes[0]
            if name in wanted
            and wanted[name].version == version
            and state.acked.get(name) != version
        ]
        if group:
            return group
        state.probes.pop(0)
    return None
