"""The preStop exec hook (`shutdown-manager drain`): ask the sidecar to drain, stream, exit.

The sidecar server owns the drain; the hook only asks over the control socket and relays
progress (kept short: the kubelet shows none of it, the server logs all of it). When the
server cannot be reached, or dies mid-stream, the hook drains by itself with the same engine
and writes the ready marker so `/shutdown` waiters are still released.

The drain (and its minimum duration) starts when the sidecar hears from the hook, so the
usual path uses the standard library only: no asyncio, no httpx. The engine is imported
only when the hook must drain alone.

Exit status: 0 drained (or only idle connections left), 3 deadline passed with connections
left, 4 Envoy was gone or unreachable, 1 internal failure.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from shutdown_manager.address import AdminAddress
from shutdown_manager.policy import DrainPolicy

CONNECT_TIMEOUT = 2.0
"""Seconds to reach the sidecar before draining alone: it answers in milliseconds if alive."""


class SidecarUnavailable(Exception):
    """The sidecar server could not be asked, or stopped answering mid-drain."""


def format_progress(event: dict[str, Any]) -> str:
    return f"[{event.get('elapsed', 0):7.2f}s] {event.get('message', '')}"


def _request_drain(control_socket: Path) -> BinaryIO:
    """POST /drain as HTTP/1.0: the answer then streams unchunked until the server closes."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    sock.connect(str(control_socket))
    sock.sendall(b"POST /drain HTTP/1.0\r\nHost: shutdown-manager\r\nContent-Length: 0\r\n\r\n")
    sock.settimeout(None)  # the drain itself may take as long as its deadline
    stream = sock.makefile("rb")
    sock.close()  # the file object keeps the connection open
    status = stream.readline().split()
    if len(status) < 2 or status[1] != b"200":
        raise SidecarUnavailable(
            f"sidecar answered {b' '.join(status[1:]).decode(errors='replace')!r}"
        )
    while stream.readline().strip():  # headers
        pass
    return stream


def ask_sidecar(control_socket: Path, out: TextIO) -> int:
    """Stream the sidecar's drain; return the exit status it ended with."""
    try:
        with _request_drain(control_socket) as stream:
            for line in stream:
                if not line.strip():
                    continue
                event = json.loads(line)
                print(format_progress(event), file=out, flush=True)
                if event.get("event") == "finished":
                    return int(event["exit_code"])
    except (OSError, ValueError, KeyError) as exc:
        raise SidecarUnavailable(str(exc) or type(exc).__name__) from exc
    raise SidecarUnavailable("sidecar closed the stream before the drain ended")


def drain_alone(
    admin_address: AdminAddress,
    policy: DrainPolicy,
    ready_file: Path | None,
    admin_timeout: float,
    out: TextIO,
) -> int:
    """The same drain, run in the hook's own process."""
    import asyncio

    from shutdown_manager.admin import AdminClient
    from shutdown_manager.drain import DrainEngine, DrainEvent
    from shutdown_manager.logs import log_event
    from shutdown_manager.readiness import ReadyFile

    marker = ReadyFile(ready_file)

    def relay(event: DrainEvent) -> None:
        print(format_progress(event.to_dict()), file=out, flush=True)

    async def drain() -> int:
        async with AdminClient(admin_address, timeout=admin_timeout) as admin:
            engine = DrainEngine(admin, policy, [relay, log_event, marker.observe])
            try:
                report = await engine.run()
            except Exception as exc:  # a bug must still write the marker and exit non-zero
                report = engine.fail(exc)
        return report.outcome.exit_code

    return asyncio.run(drain())


def run_hook(
    control_socket: Path,
    admin_address: AdminAddress,
    policy: DrainPolicy,
    ready_file: Path | None,
    admin_timeout: float,
    out: TextIO = sys.stdout,
) -> int:
    try:
        return ask_sidecar(control_socket, out)
    except SidecarUnavailable as exc:
        from shutdown_manager.logs import get_logger

        get_logger("hook").warning(
            "sidecar at %s unavailable (%s): draining from the hook", control_socket, exc
        )
        print(f"sidecar unavailable ({exc}): draining from the hook", file=out, flush=True)
    return drain_alone(admin_address, policy, ready_file, admin_timeout, out)
