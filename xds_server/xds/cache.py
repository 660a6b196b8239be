"""Versioned snapshots: what each proxy should have, decided apart from how it is streamed.

Every resource is serialized once (deterministically) and versioned by its content hash, so
versions are the same across restarts and replicas: a restarted server re-sends nothing
Envoy does not already have, and Envoy rebuilds and drains nothing. A type's version folds
its resources' names and versions together. A snapshot is derived from the one before by
what changed, and checked before it is published: every cluster a route uses exists and has
endpoints.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from envoy.config.route.v3 import route_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from xds_server.translate.routes import ROUTE_OPTIONS_BYTES, referenced_clusters
from xds_server.translate.type_urls import CLUSTER, ENDPOINT, ROUTE, ROUTE_VHDS, VHOST
from xds_server.xds.order import PUSH_ORDER

T = TypeVar("T")
MEMO_LIMIT = 4096
"""Shared results kept per snapshot: the states a fleet's streams are in are few (most
proxies are where the last snapshot left them); past this the memo starts over."""
SNAPSHOT_KEYS = (*PUSH_ORDER, ROUTE_VHDS)
COMPARED = tuple(key for key in SNAPSHOT_KEYS if key != ROUTE)
"""Full route configurations are derived from the virtual hosts: comparing those is enough."""


@dataclass(frozen=True)
class Entry:
    name: str
    version: str
    resource: any_pb2.Any
    message: Message | None
    clusters: frozenset[str] = frozenset()
    """Clusters it sends traffic to (virtual hosts and route configurations): computed
    once per version, not once per proxy and push."""

    @functools.cached_property
    def digest(self) -> int:
        """This name at this version, as a number to fold into its type's version."""
        return named_digest(self.name, self.version)

    @functools.cached_property
    def as_field(self) -> bytes:
        """The resource as a repeated field 2 (RouteConfiguration.virtual_hosts)."""
        return length_delimited(2, self.resource.value)

    @functools.cached_property
    def as_any(self) -> bytes:
        """The resource as an Any in DiscoveryResponse.resources (field 2): serialized once
        per version, then copied into every state-of-the-world response that holds it."""
        resource = self.resource
        return length_delimited(
            2, length_delimited(1, resource.type_url.encode()) + length_delimited(2, resource.value)
        )

    @functools.cached_property
    def as_resource(self) -> bytes:
        """The resource as a Resource in DeltaDiscoveryResponse.resources (field 2): version
        (1), the Any (2), name (3)."""
        inner = (
            length_delimited(1, self.version.encode())
            + self.as_any
            + length_delimited(3, self.name.encode())
        )
        return length_delimited(2, inner)

    def decoded(self) -> Message:
        """The message (parsed from the bytes for a route configuration assembled from them)."""
        if self.message is not None:
            return self.message
        decoded: Message = route_pb2.RouteConfiguration.FromString(self.resource.value)
        return decoded


def clusters_used(entries: Iterable[Entry]) -> set[str]:
    used: set[str] = set()
    for entry in entries:
        used |= entry.clusters
    return used


def _version(type_url: str, data: bytes) -> str:
    return hashlib.sha256(type_url.encode() + b"\0" + data).hexdigest()[:16]


def _entry(type_url: str, name: str, message: Message) -> Entry:
    data = message.SerializeToString(deterministic=True)
    clusters = frozenset(referenced_clusters({name: message})) if type_url == VHOST else frozenset()
    return Entry(
        name,
        _version(type_url, data),
        any_pb2.Any(type_url=type_url, value=data),
        message,
        clusters,
    )


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(number: int, data: bytes) -> bytes:
    """A length-delimited protobuf field: tag, length, bytes."""
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _text(number: int, text: str) -> bytes:
    """A string field, left out when empty (as proto3 serializes it)."""
    return length_delimited(number, text.encode()) if text else b""


def sotw_body(version: str, entries: Iterable[Entry], type_url: str) -> bytes:
    """A DiscoveryResponse without its nonce, assembled from the resources' own bytes: built
    once per snapshot and set of resources, shared by every stream that sends it. A message
    is the concatenation of its fields, so the nonce is appended (`nonce_field`)."""
    return _text(1, version) + b"".join(e.as_any for e in entries) + _text(4, type_url)


def delta_body(
    system_version: str, changed: Iterable[Entry], removed: Iterable[str], type_url: str
) -> bytes:
    """A DeltaDiscoveryResponse without its nonce (see `sotw_body`)."""
    return (
        _text(1, system_version)
        + b"".join(e.as_resource for e in changed)
        + _text(4, type_url)
        + b"".join(length_delimited(6, name.encode()) for name in removed)
    )


def nonce_field(nonce: str) -> bytes:
    """Field 5 of both response messages: appended to a shared body, per stream."""
    return _text(5, nonce)


def route_entry(name: str, vhosts: list[Entry]) -> Entry:
    """The full route configuration for state-of-the-world proxies, assembled from the
    virtual hosts' serialized bytes: exactly what serializing RouteConfiguration(name,
    virtual_hosts, **ROUTE_OPTIONS) gives, without building (and copying) a message of
    10,000 routes."""
    data = (
        length_delimited(1, name.encode())
        + b"".join(v.as_field for v in vhosts)
        + ROUTE_OPTIONS_BYTES
    )
    clusters = frozenset(clusters_used(vhosts))
    return Entry(
        name, _version(ROUTE, data), any_pb2.Any(type_url=ROUTE, value=data), None, clusters
    )


def type_version(entries: Mapping[str, Entry]) -> str:
    """One version for a set of resources, from their names and versions: the XOR of one
    hash per resource, so a snapshot updates it per changed resource (names are unique:
    nothing cancels out), and any replica computes the same."""
    digest = 0
    for entry in entries.values():
        digest ^= entry.digest
    return _hex(digest)


def versions_digest(versions: Mapping[str, str]) -> str:
    """The same version for resources known by name and version alone (a proxy's view)."""
    digest = 0
    for name, version in versions.items():
        digest ^= named_digest(name, version)
    return _hex(digest)


def named_digest(name: str, version: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{name}={version}".encode()).digest()[:8], "big")


def _hex(digest: int) -> str:
    return f"{digest:016x}"


class InconsistentSnapshot(ValueError):
    """A snapshot that would send Envoy a reference to something it does not have."""


Changes = Mapping[str, Mapping[str, Message | None]]
"""Resources by type URL and name that changed: the new message, or None once removed."""


@dataclass(frozen=True)
class Snapshot:
    """What every proxy should have. Derived from the previous one by what changed: its
    cost is that of the change, not of the whole configuration."""

    resources: Mapping[str, Mapping[str, Entry]]
    serial: int = 0
    _digests: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)
    _uses: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)
    """Cluster -> how many virtual hosts send traffic to it."""
    _versions: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    _memo: dict[tuple[int, ...], tuple[tuple[object, ...], Any]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def memo(self, key: tuple[object, ...], compute: Callable[[], T]) -> T:
        """`compute()` once per snapshot for every stream that asks with the same objects
        (compared by identity: mappings a snapshot or a stream never changes once made), so
        a thousand proxies in the same state cost one computation and one serialization.
        Scoped to this snapshot: it goes away with it."""
        ident = tuple(map(id, key))
        hit = self._memo.get(ident)
        if hit is not None and all(a is b for a, b in zip(hit[0], key, strict=True)):
            found: T = hit[1]
            return found
        value = compute()
        if len(self._memo) >= MEMO_LIMIT:
            self._memo.clear()
        self._memo[ident] = (key, value)
        return value

    @classmethod
    def build(cls, resources: Mapping[str, Mapping[str, Message]], serial: int) -> Snapshot:
        """A whole snapshot, checked."""
        snapshot = cls({}, 0).derive({t: resources.get(t, {}) for t in SNAPSHOT_KEYS}, serial)
        snapshot.check()
        return snapshot

    def derive(self, changes: Changes, serial: int) -> Snapshot:
        """This snapshot with `changes` applied (not checked: see `check`). Each changed
        resource is serialized (deterministically) and hashed once, here."""
        resources = dict(self.resources)
        digests = dict(self._digests)
        uses = self._uses
        for type_url, changed in changes.items():
            if type_url == ROUTE or not changed:
                continue  # full route configurations are assembled from the virtual hosts
            wire = ROUTE if type_url == ROUTE_VHDS else type_url
            entries = dict(resources.get(type_url, {}))
            digest = digests.get(type_url, 0)
            counted = dict(uses) if type_url == VHOST else {}
            for name, message in changed.items():
                old = entries.pop(name, None)
                if old is not None:
                    digest ^= old.digest
                    _count(counted, old.clusters, -1)
                if message is not None:
                    new = entries[name] = _entry(wire, name, message)
                    digest ^= new.digest
                    _count(counted, new.clusters, 1)
            resources[type_url], digests[type_url] = entries, digest
            uses = counted if type_url == VHOST else uses
        return Snapshot(resources, serial, digests, uses)

    @functools.cached_property
    def full_routes(self) -> Mapping[str, Entry]:
        """Route configurations with every virtual host, for state-of-the-world proxies:
        assembled on first use (delta proxies never need them), once per snapshot; exact
        hosts first, then wildcards, then `*` (for whoever reads a config dump)."""
        vhosts = sorted(self.resources.get(VHOST, {}).values(), key=_vhost_rank)
        return {
            name: route_entry(name, [v for v in vhosts if v.name.startswith(name + "/")])
            for name in self.resources.get(ROUTE_VHDS, {})
        }

    def entries(self, type_url: str) -> Mapping[str, Entry]:
        if type_url == ROUTE:
            return self.full_routes
        return self.resources.get(type_url, {})

    def version(self, type_url: str) -> str:
        """A type's version, computed once per snapshot (streams ask on every push)."""
        found = self._versions.get(type_url)
        if found is None:
            if type_url == ROUTE:
                found = type_version(self.full_routes)
            else:
                found = _hex(self._digests.get(type_url, 0))
            self._versions[type_url] = found
        return found

    def check(self) -> None:
        """Every cluster a route uses exists and has endpoints: a cost per cluster, not
        per route."""
        clusters = self.entries(CLUSTER)
        missing = {name for name, count in self._uses.items() if count and name not in clusters}
        if missing:
            raise InconsistentSnapshot(f"routes use unknown clusters: {sorted(missing)}")
        without = clusters.keys() - self.entries(ENDPOINT).keys()
        if without:
            raise InconsistentSnapshot(f"clusters without endpoints: {sorted(without)}")


def _count(uses: dict[str, int], clusters: frozenset[str], step: int) -> None:
    for name in clusters:
        count = uses.get(name, 0) + step
        if count:
            uses[name] = count
        else:
            del uses[name]


def _vhost_rank(entry: Entry) -> tuple[int, str]:
    host = entry.name.partition("/")[2]
    return (2 if host == "*" else 1 if host.startswith("*.") else 0, entry.name)


@dataclass
class SnapshotStore:
    """The current snapshot; streams wait here for the next one."""

    current: Snapshot = field(default_factory=lambda: Snapshot({}, 0))
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def publish(self, snapshot: Snapshot) -> bool:
        """Publish if anything differs; return whether it did."""
        if (
            all(snapshot.version(t) == self.current.version(t) for t in COMPARED)
            and self.current.serial
        ):
            return False
        self.current = snapshot
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return True

    async def wait_after(self, serial: int) -> Snapshot:
        while self.current.serial == serial:
            await self._changed.wait()
        return self.current


_NAME_SETS: dict[frozenset[str], frozenset[str]] = {}


def interned(names: frozenset[str]) -> frozenset[str]:
    """One object per distinct set of subscribed names, so streams subscribed alike share
    `Snapshot.memo` results (it compares by identity)."""
    found = _NAME_SETS.get(names)
    if found is None:
        if len(_NAME_SETS) >= MEMO_LIMIT:
            _NAME_SETS.clear()
        found = _NAME_SETS[names] = names
    return found
