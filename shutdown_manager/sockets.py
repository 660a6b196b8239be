"""Process-level evidence for when the admin API is hung or returns garbage.

Containers of a pod share one network namespace, so the sidecar sees Envoy's sockets in the
kernel's tables without sharing its PID namespace. A listener port that is still listening
means Envoy is alive; the connections in a state Envoy still holds open are what is left to
drain. Connections Envoy has already closed (FIN_WAIT, TIME_WAIT) do not count.
"""

from __future__ import annotations

import socket
import struct
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


# -- a cheap wake-up signal: sock_diag over netlink ---------------------------------------
#
# Between admin polls the drain watches the kernel's count of connections held on Envoy's
# listener ports, and polls the admin API early when it reaches the threshold. The kernel
# filters by port itself (inet_diag bytecode), so one look costs tens of microseconds even
# with many connections in the namespace, where reading /proc/net/tcp would not.

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_DUMP_REQUEST = 0x1 | 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_INET_DIAG_REQ_BYTECODE = 1
_BC_S_GE, _BC_S_LE = 2, 3
_TCP_STATES = (1 << 1) | (1 << 3) | (1 << 8)
"""ESTABLISHED, SYN_RECV and CLOSE_WAIT: the states of a connection Envoy still holds."""
_HEADER = struct.Struct("=IHHII")
_OP = struct.Struct("=BBH")


def _port_filter(port: int) -> bytes:
    """`sport >= port && sport <= port`; a failed test jumps past the end (reject)."""
    return (
        _OP.pack(_BC_S_GE, 8, 20) + _OP.pack(0, 0, port)
        + _OP.pack(_BC_S_LE, 8, 12) + _OP.pack(0, 0, port)
    )  # fmt: skip


def _request(family: int, port: int, seq: int) -> bytes:
    body = struct.pack("=BBBxI", family, socket.IPPROTO_TCP, 0, _TCP_STATES) + bytes(48)
    bytecode = _port_filter(port)
    attribute = struct.pack("=HH", 4 + len(bytecode), _INET_DIAG_REQ_BYTECODE) + bytecode
    payload = body + attribute
    return (
        _HEADER.pack(_HEADER.size + len(payload), _SOCK_DIAG_BY_FAMILY, _NLM_F_DUMP_REQUEST, seq, 0)
        + payload
    )


class KernelConnectionCounter:
    """Counts connections held on given ports through one netlink socket; None if unsupported."""

    def __init__(self) -> None:
        self._seq = 0
        try:
            self._sock: socket.socket | None = socket.socket(
                socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG
            )
        except (OSError, AttributeError):
            self._sock = None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def count(self, ports: Collection[int]) -> int | None:
        if self._sock is None or not ports:
            return None
        total = 0
        try:
            for port in ports:
                for family in (socket.AF_INET, socket.AF_INET6):
                    found = self._dump(family, port)
                    if found is None:
                        return None
                    total += found
        except OSError:
            self.close()
            return None
        return total

    def _dump(self, family: int, port: int) -> int | None:
        assert self._sock is not None
        self._seq += 1
        self._sock.send(_request(family, port, self._seq))
        found = 0
        while True:
            data = self._sock.recv(65536)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _, seq, _ = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    return None
                if seq == self._seq:
                    if kind == _NLMSG_DONE:
                        return found
                    if kind == _NLMSG_ERROR:
                        return None
                    found += 1
                offset += (length + 3) & ~3
