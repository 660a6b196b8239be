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
* Shared, not per proxy: what a proxy has is a mapping the snapshot made (`TypeState.at`),
  not a copy, so proxies in the same state ask `Snapshot.memo` the same question and a
  thousand of them cost one diff and one serialized body; each stream appends its nonce.
  A stream leaves the shared path only to find which resource it NACKed.
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
from xds_server.translate.type_urls import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    ROUTE_VHDS,
    SECRET,
    VHOST,
)
from xds_server.xds.cache import (
    Entry,
    Snapshot,
    SnapshotStore,
    clusters_used,
    delta_body,
    interned,
    nonce_field,
    route_entry,
    sotw_body,
    type_version,
)
from xds_server.xds.order import PUSH_ORDER

WILDCARD_TYPES = {LISTENER, CLUSTER, VHOST}
log = logging.getLogger("xds_server.ads")
NACK_REASON_CHARS = 4000
"""Longest NACK reason logged: enough for a listener's full error, bounded per line."""
_nonces = itertools.count(1)
AFFECTED_BY = {
    CLUSTER: (CLUSTER, ROUTE, VHOST),  # routes wait for their clusters
    ENDPOINT: (ENDPOINT, ROUTE, VHOST),  # and their endpoints
    SECRET: (SECRET,),
    LISTENER: (LISTENER,),
    ROUTE: (CLUSTER, ENDPOINT, ROUTE, VHOST),  # clusters kept while routes use them; VHDS
    VHOST: (CLUSTER, ENDPOINT, VHOST),  # waits for its route configuration
}
"""The types whose push can change when a proxy answers (or subscribes to) a type: the
others' verdict against the same snapshot stands, so they are not looked at again."""
EMPTY: Mapping[str, Entry] = {}


@dataclass(frozen=True)
class Response:
    """A serialized response and its nonce. Shared by every stream that sends the same body
    (the nonce too: a nonce only has to tell one stream's responses apart, and a stream never
    gets the same shared body twice), so a thousand streams hold one object, not copies."""

    nonce: str
    wire: bytes

    @classmethod
    def of(cls, body: bytes) -> Response:
        nonce = str(next(_nonces))
        return cls(nonce, body + nonce_field(nonce))


@dataclass
class Diff:
    """What a delta proxy that has `old` lacks to have `new`: computed once per pair, and
    its response built once (on first use)."""

    changed: list[Entry]
    removed: list[str]
    response: Response | None = None

    @classmethod
    def between(cls, old: Mapping[str, Entry], new: Mapping[str, Entry]) -> Diff:
        changed = [e for n, e in new.items() if _version_of(old.get(n)) != e.version]
        return cls(changed, [n for n in old if n not in new])

    @property
    def empty(self) -> bool:
        return not self.changed and not self.removed


@dataclass
class TypeState:
    """One resource type on one stream."""

    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    at: Mapping[str, Entry] | None = None
    """What the proxy has, when it is exactly a mapping a snapshot made (never changed in
    place, shared with every proxy in the same state); None: in `acked`/`acked_entries`
    (delta, after a NACK or a partial resume). SotW streams always have one, replaced on
    each ACK."""
    pending: Mapping[str, Entry] | None = None
    """Delta: what the proxy will have once it ACKs the response in flight (shared path)."""
    pending_diff: Diff | None = None
    sent_version: str = ""  # SotW: the type version in flight
    _names_key: frozenset[str] | None = None
    open_request: bool = False
    nonce: str = ""
    sent: dict[str, str] = field(default_factory=dict)  # name -> version sent (pending ACK)
    acked: dict[str, str] = field(default_factory=dict)  # name -> version the proxy has
    acked_entries: dict[str, Entry] = field(default_factory=dict)
    sent_entries: Mapping[str, Entry] = field(default_factory=dict)
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

    def names_key(self) -> frozenset[str]:
        """The subscribed names as one object shared by every stream subscribed alike."""
        if self._names_key is None:
            self._names_key = interned(frozenset(self.names))
        return self._names_key

    def has(self) -> Mapping[str, Entry]:
        """The resources the proxy has, as entries (where their content is known)."""
        return self.at if self.at is not None else self.acked_entries

    def has_names(self) -> set[str] | Mapping[str, Entry]:
        return self.at if self.at is not None else set(self.acked) | set(self.acked_entries)

    def unshare(self) -> None:
        """Leave the shared path: keep what the proxy has in this stream's own dicts."""
        if self.at is not None:
            self.acked = {name: entry.version for name, entry in self.at.items()}
            self.acked_entries = dict(self.at)
            self.at = None
        if self.pending_diff is not None:
            self.sent = {e.name: e.version for e in self.pending_diff.changed}
            self.sent |= dict.fromkeys(self.pending_diff.removed, "")
            self.sent_entries = {e.name: e for e in self.pending_diff.changed}
            self.pending = self.pending_diff = None


class Stream:
    """Shared bookkeeping of one proxy's stream (both flavours)."""

    response_type: Any = discovery_pb2.DiscoveryResponse
    route_key = ROUTE
    """Where its route configurations come from in a snapshot: full ones (SotW), or ones
    whose virtual hosts come over VHDS (delta)."""

    def __init__(self, store: SnapshotStore, metrics: XdsMetrics) -> None:
        self.store = store
        self.metrics = metrics
        self.node = "?"
        self.types: dict[str, TypeState] = {t: TypeState(at=EMPTY) for t in PUSH_ORDER}
        self.out: asyncio.Queue[bytes | None] = asyncio.Queue()
        """Responses: at most one per type (the next waits for its ACK); None: the end."""
        self.shares: list[Any] = []
        """The write budget this stream's unanswered responses hold (server.py)."""
        self.waiting_since: float | None = None
        """When a response was handed to gRPC that the proxy has not answered yet (None:
        none). Not when it was queued: a wait for the write budget is the server's."""
        self.pushed_serial = -1
        """The snapshot the last push looked at: `clean` flags speak of that one."""

    def decode(self, wire: bytes | None) -> Any:
        """A response as the proxy reads it (tests and benchmarks look inside)."""
        assert wire is not None
        return self.response_type.FromString(wire)

    def send(self, state: TypeState, response: Response) -> None:
        state.nonce = response.nonce
        self.out.put_nowait(response.wire)

    def answered(self) -> None:
        """The proxy sent a request: it reads and answers."""
        self.waiting_since = None

    def retained_clusters(self, snapshot: Snapshot) -> set[str]:
        """Clusters the proxy's ACKed routes (and virtual hosts) still send traffic to."""
        routes, vhosts = self.types[ROUTE].at, self.types[VHOST].at
        if routes is not None and vhosts is not None:
            return snapshot.memo(
                ("retained", routes, vhosts),
                lambda: clusters_used([*routes.values(), *vhosts.values()]),
            )
        return clusters_used([*self.types[ROUTE].has().values(), *self.types[VHOST].has().values()])

    def source(self, type_url: str, snapshot: Snapshot) -> Mapping[str, Entry]:
        return snapshot.entries(self.route_key if type_url == ROUTE else type_url)

    def wanted(self, type_url: str, snapshot: Snapshot) -> Mapping[str, Entry]:
        """What the proxy should have of a type: the snapshot's own mapping, or one shared by
        every stream subscribed to the same names; a copy of its own only while it keeps
        clusters its ACKed routes still use."""
        state = self.types[type_url]
        source = self.source(type_url, snapshot)
        kept = self._kept(type_url, source, snapshot)
        if kept:
            entries = {**source, **kept}
            return entries if state.wildcard else _only(entries, state.names)
        if state.wildcard:
            return source
        names = state.names_key()
        return snapshot.memo(("wanted", source, names), lambda: _only(source, names))

    def _kept(
        self, type_url: str, source: Mapping[str, Entry], snapshot: Snapshot
    ) -> dict[str, Entry]:
        if type_url not in (CLUSTER, ENDPOINT):
            return {}
        has = self.types[type_url].has()
        return {
            name: has[name]
            for name in self.retained_clusters(snapshot)
            if name not in source and name in has
        }

    def ready_for(self, type_url: str, entries: Mapping[str, Entry], snapshot: Snapshot) -> bool:
        """Routes wait until the proxy has ACKed every cluster they use, and its endpoints:
        a cluster still warming is unknown to Envoy's router, which would answer 503."""
        if type_url not in (ROUTE, VHOST):
            return True
        clusters, endpoints = self.types[CLUSTER].at, self.types[ENDPOINT].at
        if clusters is not None and endpoints is not None:
            return snapshot.memo(
                ("ready", entries, clusters, endpoints),
                lambda: _warm(entries, clusters, endpoints, snapshot),
            )
        return _warm(entries, self._has_names(CLUSTER), self._has_names(ENDPOINT), snapshot)

    def _has_names(self, type_url: str) -> set[str] | Mapping[str, Entry]:
        return self.types[type_url].has_names()

    def converged(self, snapshot: Snapshot) -> bool:
        """The proxy has ACKed everything it subscribed to, as of `snapshot`. Decided by
        the last push's flags, not by comparing thousands of versions per proxy per ACK."""
        if self.pushed_serial != snapshot.serial:
            return False
        return all(state.clean for state in self.types.values() if state.subscribed_seen)

    def push(self, snapshot: Snapshot, answered: str | None = None) -> None:
        """Answer what is open and has changed, type by type in make-before-break order.
        Before the first snapshot there is nothing to say: an empty answer would tell a
        reconnecting proxy to delete everything it has (requests wait for the first one).
        After a request of type `answered`, only the types it can change are looked at."""
        if snapshot.serial == 0:
            return
        types: tuple[str, ...] = PUSH_ORDER
        if answered is not None and snapshot.serial == self.pushed_serial:
            types = AFFECTED_BY[answered]  # the rest were judged against this snapshot already
        self.pushed_serial = snapshot.serial
        for type_url in types:
            state = self.types[type_url]
            if state.subscribed_seen:  # never asked for: nothing to compute on this hot path
                self._push_type(type_url, state, snapshot)

    def _push_type(self, type_url: str, state: TypeState, snapshot: Snapshot) -> None:
        raise NotImplementedError

    def _count(self, type_url: str, resources: int) -> None:
        self.metrics.count_push(type_url.rsplit(".", 1)[-1], resources)

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


def _only(entries: Mapping[str, Entry], names: set[str] | frozenset[str]) -> dict[str, Entry]:
    return {name: entry for name, entry in entries.items() if name in names}


def _warm(
    entries: Mapping[str, Entry],
    clusters: set[str] | Mapping[str, Entry],
    endpoints: set[str] | Mapping[str, Entry],
    snapshot: Snapshot,
) -> bool:
    used = snapshot.memo(("used", entries), lambda: clusters_used(entries.values()))
    return all(name in clusters and name in endpoints for name in used)


def reason(message: str) -> str:
    """Envoy's whole rejection on one line, bounded: the first line alone is often just
    `Proto constraint validation failed (...)` without the field that broke it."""
    flat = " | ".join(line.strip() for line in message.splitlines() if line.strip()) or "?"
    return flat if len(flat) <= NACK_REASON_CHARS else flat[:NACK_REASON_CHARS] + "…"


class SotwStream(Stream):
    _assembled: dict[str, Entry] | None = None
    """The virtual hosts of the route configurations `wanted` just assembled, if it did."""
    response_type = discovery_pb2.DiscoveryResponse

    def handle(self, request: discovery_pb2.DiscoveryRequest, snapshot: Snapshot) -> None:
        self.answered()
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
                state.parked_version = state.sent_version
        elif request.response_nonce:
            state.at = state.sent_entries  # never changed in place: shared, not copied
            state.acked_version = state.sent_version
            state.acked_vhosts = state.sent_vhosts
        wildcard = request.type_url in WILDCARD_TYPES and not list(request.resource_names)
        names = set(request.resource_names)
        if (wildcard, names) != (state.wildcard, state.names):
            state.wildcard, state.names, state._names_key = wildcard, names, None
        state.subscribed_seen = True
        state.open_request = True
        if not request.response_nonce and request.version_info:
            self._resumed(request.type_url, request.version_info, snapshot)
        self.push(snapshot, request.type_url)

    def _resumed(self, type_url: str, version: str, snapshot: Snapshot) -> None:
        """A proxy reconnecting with the version it has: versions are content hashes, so if it
        is the current one there is nothing to send (after a restart, or from a replica)."""
        state = self.types[type_url]
        if snapshot.serial == 0:
            state.resumed_version = version  # nothing to compare with yet
            return
        entries = self.wanted(type_url, snapshot)
        if self._version(entries, snapshot) == version:
            state.at = entries
            state.acked_version = version

    @staticmethod
    def _version(entries: Mapping[str, Entry], snapshot: Snapshot) -> str:
        return snapshot.memo(("version", entries), lambda: type_version(entries))

    def wanted(self, type_url: str, snapshot: Snapshot) -> Mapping[str, Entry]:
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
        version = self._version(entries, snapshot)
        state.clean = version == state.acked_version
        if not state.open_request:
            return
        if version in (state.acked_version, state.parked_version):
            return  # the proxy has it, or rejected exactly this
        if not self.ready_for(type_url, entries, snapshot):
            return  # sent once the clusters it uses are warm
        state.sent_entries = entries  # read, never changed: shared, not copied
        state.sent_version = version
        if type_url == ROUTE:
            state.sent_vhosts = self._sent_vhosts(snapshot)
            if state.probes:
                state.probes.pop(0)
        state.open_request = False
        self._count(type_url, len(entries))
        response = snapshot.memo(
            ("sotw", entries, type_url),
            lambda: Response.of(sotw_body(version, entries.values(), type_url)),
        )
        self.send(state, response)

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


def _version_of(entry: Entry | None) -> str | None:
    return None if entry is None else entry.version


class DeltaStream(Stream):
    route_key = ROUTE_VHDS
    response_type = discovery_pb2.DeltaDiscoveryResponse

    def wanted(self, type_url: str, snapshot: Snapshot) -> Mapping[str, Entry]:
        """Virtual hosts go out once the proxy has ACKed their route configuration: Envoy
        starts a configuration's VHDS subscription only then, and drops virtual hosts that
        came before it (a route configuration added to a running proxy would stay empty,
        its listener warming)."""
        entries = super().wanted(type_url, snapshot)
        if type_url != VHOST:
            return entries
        acked = self.types[ROUTE].has_names()
        configs = interned(frozenset(n for n in snapshot.entries(ROUTE_VHDS) if n in acked))
        if len(configs) == len(snapshot.entries(ROUTE_VHDS)):
            return entries  # every configuration ACKed: checked per configuration, not host
        return snapshot.memo(("configs", entries, configs), lambda: _of_configs(entries, configs))

    def handle(self, request: discovery_pb2.DeltaDiscoveryRequest, snapshot: Snapshot) -> None:
        self.answered()
        if request.node.id:
            self.node = request.node.id
        state = self.types.get(request.type_url)
        if state is None:
            return
        self._subscriptions(request, state, snapshot)
        if request.response_nonce and request.response_nonce == state.nonce:
            if state.pending is not None and request.HasField("error_detail"):
                state.unshare()  # finding the culprit takes the stream's own dicts
            elif state.pending is not None:
                state.at, state.pending, state.pending_diff = state.pending, None, None
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
        self.push(snapshot, request.type_url)

    def _subscriptions(
        self, request: discovery_pb2.DeltaDiscoveryRequest, state: TypeState, snapshot: Snapshot
    ) -> None:
        subscribe = set(request.resource_names_subscribe)
        unsubscribe = list(request.resource_names_unsubscribe)
        if not state.subscribed_seen and request.type_url in WILDCARD_TYPES and not subscribe:
            state.wildcard = True  # legacy wildcard: an empty first subscription
        state.subscribed_seen = True
        if "*" in subscribe:
            state.wildcard = True
            subscribe.discard("*")
        if subscribe - state.names or unsubscribe:
            state._names_key = None
        state.names |= subscribe
        if unsubscribe:
            state.unshare()
        for name in unsubscribe:
            if name == "*":
                state.wildcard = False
            state.names.discard(name)
            state.acked.pop(name, None)
            state.acked_entries.pop(name, None)
        if request.initial_resource_versions:
            self._resume(request, state, snapshot)

    def _resume(
        self, request: discovery_pb2.DeltaDiscoveryRequest, state: TypeState, snapshot: Snapshot
    ) -> None:
        """A proxy reconnecting (to a restarted server or another replica) says what it has:
        that counts as ACKed, with the full entry where the content is the current one. When
        it has exactly what it should (versions are content hashes, equal on every replica),
        it shares the snapshot's mapping like any proxy in step."""
        versions = request.initial_resource_versions
        if state.at is EMPTY and snapshot.serial:
            wanted = self.wanted(request.type_url, snapshot)
            if len(wanted) == len(versions) and all(
                versions.get(name) == entry.version for name, entry in wanted.items()
            ):
                state.at = wanted
                return
        state.unshare()
        current = self.source(request.type_url, snapshot)
        for name, version in versions.items():
            state.acked.setdefault(name, version)
            entry = current.get(name)
            if entry is not None and entry.version == version:
                state.acked_entries.setdefault(name, entry)

    def _push_type(self, type_url: str, state: TypeState, snapshot: Snapshot) -> None:
        wanted = self.wanted(type_url, snapshot)
        if state.at is not None and not state.probes and not state.parked:
            self._push_shared(type_url, state, snapshot, wanted)
            return
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
        if state.clean and not state.probes and not state.parked:
            state.at, state.acked, state.acked_entries = wanted, {}, {}  # in step: share again
        if not state.open_request or state.sent:
            return
        if not self.ready_for(type_url, wanted, snapshot):
            return  # sent once the clusters it uses are warm
        if not changed and not removed and state.responded:
            return
        state.responded = True
        if probe is not None:
            state.probes.pop(0)
        state.sent = {e.name: e.version for e in changed} | {n: "" for n in removed}
        state.sent_entries = {e.name: e for e in changed}
        state.open_request = False
        self._count(type_url, len(changed) + len(removed))
        body = delta_body(self._system_version(type_url, snapshot), changed, removed, type_url)
        self.send(state, Response.of(body))

    def _push_shared(
        self, type_url: str, state: TypeState, snapshot: Snapshot, wanted: Mapping[str, Entry]
    ) -> None:
        """The push of a proxy that has exactly a shared mapping: the diff and its bytes are
        the same for every proxy that has the same one, so they are computed once."""
        has = state.at
        assert has is not None
        diff = snapshot.memo(("diff", has, wanted, type_url), lambda: Diff.between(has, wanted))
        state.clean = diff.empty and state.pending is None
        if not state.open_request or state.pending is not None:
            return
        if not self.ready_for(type_url, wanted, snapshot):
            return  # sent once the clusters it uses are warm
        if diff.empty and state.responded:
            return
        state.responded = True
        state.pending, state.pending_diff = wanted, diff
        state.open_request = False
        self._count(type_url, len(diff.changed) + len(diff.removed))
        if diff.response is None:
            version = self._system_version(type_url, snapshot)
            diff.response = Response.of(delta_body(version, diff.changed, diff.removed, type_url))
        self.send(state, diff.response)

    def _system_version(self, type_url: str, snapshot: Snapshot) -> str:
        return snapshot.version(self.route_key if type_url == ROUTE else type_url)


def _of_configs(entries: Mapping[str, Entry], configs: frozenset[str]) -> dict[str, Entry]:
    return {n: e for n, e in entries.items() if n.split("/", 1)[0] in configs}


def _probe(state: TypeState, wanted: Mapping[str, Entry]) -> list[Entry] | None:
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
