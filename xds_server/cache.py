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

from google.protobuf import any_pb2
from google.protobuf.message import Message

from xds_server.translate import CLUSTER, ENDPOINT, PUSH_ORDER, ROUTE, referenced_clusters


@dataclass(frozen=True)
class Entry:
    name: str
    version: str
    resource: any_pb2.Any
    message: Message

    @functools.cached_property
    def clusters(self) -> frozenset[str]:
        """Clusters a route configuration sends traffic to: computed once per version, not
        once per proxy and push."""
        return frozenset(referenced_clusters({self.name: self.message}))


def clusters_used(entries: Iterable[Entry]) -> set[str]:
    used: set[str] = set()
    for entry in entries:
        used |= entry.clusters
    return used


def _entry(type_url: str, name: str, message: Message) -> Entry:
    data = message.SerializeToString(deterministic=True)
    version = hashlib.sha256(type_url.encode() + b"\0" + data).hexdigest()[:16]
    return Entry(name, version, any_pb2.Any(type_url=type_url, value=data), message)


def type_version(entries: Mapping[str, Entry]) -> str:
    hasher = hashlib.sha256()
    for name in sorted(entries):
        hasher.update(f"{name}={entries[name].version};".encode())
    return hasher.hexdigest()[:16]


class InconsistentSnapshot(ValueError):
    """A snapshot that would send Envoy a reference to something it does not have."""


@dataclass(frozen=True)
class Snapshot:
    resources: Mapping[str, Mapping[str, Entry]]
    serial: int = 0

    @classmethod
    def build(cls, resources: Mapping[str, Mapping[str, Message]], serial: int) -> Snapshot:
        built = {
            type_url: {
                name: _entry(type_url, name, msg)
                for name, msg in resources.get(type_url, {}).items()
            }
            for type_url in PUSH_ORDER
        }
        snapshot = cls(built, serial)
        snapshot.check()
        return snapshot

    def entries(self, type_url: str) -> Mapping[str, Entry]:
        return self.resources.get(type_url, {})

    def version(self, type_url: str) -> str:
        return type_version(self.entries(type_url))

    def check(self) -> None:
        missing = clusters_used(self.entries(ROUTE).values()) - set(self.entries(CLUSTER))
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
            all(snapshot.version(t) == self.current.version(t) for t in PUSH_ORDER)
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
