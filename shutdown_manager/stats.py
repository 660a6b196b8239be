"""Which connections count: parse Envoy's JSON stats and sum the serving listeners.

Every downstream connection is counted at its listener (`listener.<name>.downstream_cx_active`),
so TCP-proxy and TLS-passthrough connections count too, unlike HTTP connection manager stats.
Names are matched exactly or by glob, never by substring. The admin listener and per-thread
copies of a listener's gauges (`worker_N`, `main_thread`) are always left out: the first is
the sidecar talking to Envoy, the second would count every connection twice.

HTTP connection manager gauges are read as well, to tell a connection that is carrying a
request from one that merely sits in a client's pool (see `drain.Quiescence`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from shutdown_manager.admin import ListenerAddress

STATS_FILTER = (
    r"^(listener\..+\.downstream_cx_active"
    r"|http\..+\.downstream_(cx_active|rq_active|rq_total))$"
)
"""One admin call fetches everything the drain reads: no more, so polling stays cheap."""

ADMIN_NAME = "admin"
_LISTENER = re.compile(r"^listener\.(?P<name>.+)\.downstream_cx_active$")
_PER_THREAD = re.compile(r"\.(worker_\d+|main_thread)$")
_HTTP = re.compile(r"^http\.(?P<prefix>.+)\.downstream_(?P<what>cx_active|rq_active|rq_total)$")


class StatsError(ValueError):
    """The stats body is not what Envoy's `/stats?format=json` returns."""


def parse_stats(body: Any) -> dict[str, int]:
    """Flatten `{"stats": [{"name", "value"}, ...]}` into a dict; histograms are skipped."""
    if not isinstance(body, dict) or not isinstance(body.get("stats"), list):
        raise StatsError("stats body has no 'stats' list")
    values: dict[str, int] = {}
    for entry in body["stats"]:
        if not isinstance(entry, dict) or "histograms" in entry:
            continue
        name, value = entry.get("name"), entry.get("value")
        if not isinstance(name, str):
            raise StatsError(f"stat without a name: {entry!r}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise StatsError(f"stat {name} has a non-counter value {value!r}")
        values[name] = value
    return values


def listener_stat_name(host: str, port: int) -> str:
    """The name Envoy uses in stats for a listener without its own `stat_prefix`."""
    if ":" in host:
        return f"[{host.replace(':', '_')}]_{port}"
    return f"{host}_{port}"


@dataclass(frozen=True)
class ListenerFilter:
    """Which listeners to leave out, by exact name or glob.

    A pattern is matched against the listener's stat name (its `stat_prefix`, or its address
    as `127.0.0.1_8080`), its configured name (resolved through `/listeners`), and the stat
    prefix of HTTP connection managers, so one `--ignore-listener probe` covers all three.
    """

    patterns: tuple[str, ...] = ()
    aliases: Mapping[str, str] = field(default_factory=dict)
    """Configured listener name -> stat name, from the admin `/listeners` call."""

    @classmethod
    def resolve(
        cls, patterns: Iterable[str], listeners: Iterable[ListenerAddress]
    ) -> ListenerFilter:
        aliases = {
            item.name: listener_stat_name(item.host, item.port)
            for item in listeners
            if item.host is not None and item.port is not None
        }
        return cls(patterns=tuple(patterns), aliases=aliases)

    def _matches(self, name: str) -> bool:
        # Exact first: IPv6 stat names such as `[__1]_8080` read as glob character classes.
        return any(name == pattern or fnmatchcase(name, pattern) for pattern in self.patterns)

    def ignores_listener(self, stat_name: str) -> bool:
        if stat_name == ADMIN_NAME or self._matches(stat_name):
            return True
        return any(
            stat == stat_name and self._matches(configured)
            for configured, stat in self.aliases.items()
        )

    def ignores_configured(self, listener: ListenerAddress) -> bool:
        """True for a listener from `/listeners` that a pattern or the admin rule leaves out."""
        if self._matches(listener.name):
            return True
        if listener.host is None or listener.port is None:
            return False
        return self.ignores_listener(listener_stat_name(listener.host, listener.port))

    def ignores_http(self, prefix: str) -> bool:
        return prefix == ADMIN_NAME or self._matches(prefix)


@dataclass(frozen=True)
class ConnectionCount:
    """One reading of the connections Envoy holds on serving listeners."""

    listeners: Mapping[str, int]
    http_connections: int
    requests_active: int
    requests_total: int

    @property
    def total(self) -> int:
        return sum(self.listeners.values())

    @property
    def non_http(self) -> int:
        """Connections no HTTP connection manager owns: TCP proxy, TLS passthrough."""
        return max(0, self.total - self.http_connections)


def count_connections(values: Mapping[str, int], ignore: ListenerFilter) -> ConnectionCount:
    """Sum active connections over serving listeners, and requests over their HTTP managers."""
    listeners: dict[str, int] = {}
    http = {"cx_active": 0, "rq_active": 0, "rq_total": 0}
    for name, value in values.items():
        listener = _LISTENER.match(name)
        if listener:
            stat_name = listener["name"]
            if not _PER_THREAD.search(stat_name) and not ignore.ignores_listener(stat_name):
                listeners[stat_name] = value
            continue
        manager = _HTTP.match(name)
        if (
            manager
            and ".user_agent." not in manager["prefix"]
            and not ignore.ignores_http(manager["prefix"])
        ):
            http[manager["what"]] += value
    return ConnectionCount(
        listeners=listeners,
        http_connections=http["cx_active"],
        requests_active=http["rq_active"],
        requests_total=http["rq_total"],
    )
