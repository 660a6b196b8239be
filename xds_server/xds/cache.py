"""Versioned snapshots: what each proxy should have, decided apart from how it is streamed.

Every resource is serialized once (deterministically) and versioned by its content hash, so
versions are the same across restarts and replicas: a restarted server re-sends nothing
Envoy does not already have, and Envoy rebuilds and drains nothing. A type's version is the
hash of its resources' names and versions. A snapshot is checked before it is published:
every cluster a route uses exists and has endpoints.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from envoy.config.route.v3 import route_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from xds_server.translate.routes import referenced_clusters
from xds_server.translate.type_urls import CLUSTER, ENDPOINT, ROUTE, ROUTE_VHDS, VHOST
from xds_server.xds.order import PUSH_ORDER

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
    def as_field(self) -> bytes:
        """The resource as a repeated field 2 (RouteConfiguration.virtual_hosts)."""
        return _field(2, self.resource.value)

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


def _field(number: int, data: bytes) -> bytes:
    """A length-delimited protobuf field: tag, length, bytes."""
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def route_entry(name: str, vhosts: list[Entry]) -> Entry:
    """The full route configuration for state-of-the-world proxies, assembled from the
    virtual hosts' serialized bytes: exactly what serializing RouteConfiguration(name,
    virtual_hosts) gives, without building (and copying) a message of 10,000 routes."""
    data = _field(1, name.encode()) + b"".join(v.as_field for v in vhosts)
    clusters = frozenset(clusters_used(vhosts))
    return Entry(
        name, _version(ROUTE, data), any_pb2.Any(type_url=ROUTE, value=data), None, clusters
    )


class EntryMemo:
    """Entries of the last snapshot, reused for the very same message object (see
    TranslationMemo): an unchanged resource is neither serialized nor hashed again."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], tuple[Message, Entry]] = {}

    def entries(self, type_url: str, messages: Mapping[str, Message]) -> dict[str, Entry]:
        wire = ROUTE if type_url == ROUTE_VHDS else type_url
        built: dict[str, Entry] = {}
        for name, message in messages.items():
            found = self._entries.get((type_url, name))
            if found is None or found[0] is not message:
                found = (message, _entry(wire, name, message))
                self._entries[(type_url, name)] = found
            built[name] = found[1]
        return built

    def forget_except(self, alive: set[tuple[str, str]]) -> None:
        for key in set(self._entries) - alive:
            del self._entries[key]


def type_version(entries: Mapping[str, Entry]) -> str:
    return versions_digest({name: entry.version for name, entry in entries.items()})


def versions_digest(versions: Mapping[str, str]) -> str:
    """One version for a set of resources: a hash of their names and versions."""
    hasher = hashlib.sha256()
    for name in sorted(versions):
        hasher.update(f"{name}={versions[name]};".encode())
    return hasher.hexdigest()[:16]


class InconsistentSnapshot(ValueError):
    """A snapshot that would send Envoy a reference to something it does not have."""


@dataclass(frozen=True)
class Snapshot:
    resources: Mapping[str, Mapping[str, Entry]]
    serial: int = 0
    _versions: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(
        cls,
        resources: Mapping[str, Mapping[str, Message]],
        serial: int,
        memo: EntryMemo | None = None,
    ) -> Snapshot:
        memo = memo or EntryMemo()
        built = {
            type_url: memo.entries(type_url, resources.get(type_url, {}))
            for type_url in SNAPSHOT_KEYS
            if type_url != ROUTE
        }
        memo.forget_except({(t, n) for t, entries in built.items() for n in entries})
        snapshot = cls(built, serial)
        snapshot.check()
        return snapshot

    @functools.cached_property
    def full_routes(self) -> Mapping[str, Entry]:
        """Route configurations with every virtual host, for state-of-the-world proxies:
        assembled on first use (delta proxies never need them), once per snapshot."""
        vhosts = list(self.resources.get(VHOST, {}).values())
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
            found = self._versions[type_url] = type_version(self.entries(type_url))
        return found

    def check(self) -> None:
        missing = clusters_used(self.entries(VHOST).values()) - set(self.entries(CLUSTER))
        if missing:
            raise InconsistentSnapshot(f"routes use unknown clusters: {sorted(missing)}")
        without = set(self.entries(CLUSTER)) - set(self.entries(ENDPOINT))
        if without:
            raise InconsistentSnapshot(f"clusters without endpoints: {sorted(without)}")


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
