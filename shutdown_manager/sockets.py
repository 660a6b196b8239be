"""Process-level evidence for when the admin API is hung or returns garbage.

Containers of a pod share one network namespace, so the sidecar sees Envoy's sockets in the
kernel's tables without sharing its PID namespace. A listener port that is still listening
means Envoy is alive; the connections in a state Envoy still holds open are what is left to
drain. Connections Envoy has already closed (FIN_WAIT, TIME_WAIT) do not count.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import psutil

HELD_STATES = frozenset({psutil.CONN_ESTABLISHED, psutil.CONN_SYN_RECV, psutil.CONN_CLOSE_WAIT})
"""States of a downstream socket that Envoy has not closed yet."""


@dataclass(frozen=True)
class SocketReading:
    listening: bool
    held: int


def read_listener_sockets(ports: Collection[int]) -> SocketReading | None:
    """Count held connections on Envoy's listener ports; None when the kernel won't tell."""
    if not ports:
        return None
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    listening = False
    held = 0
    for conn in connections:
        if not conn.laddr or conn.laddr.port not in ports:
            continue
        if conn.status == psutil.CONN_LISTEN:
            listening = True
        elif conn.status in HELD_STATES and conn.raddr:
            held += 1
    return SocketReading(listening=listening, held=held)
