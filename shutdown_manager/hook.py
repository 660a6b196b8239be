"""The preStop exec hook (`shutdown-manager drain`): ask the sidecar to drain, stream, exit.

The sidecar server owns the drain; the hook only asks over the control socket and relays
progress (kept short: the kubelet shows none of it, the server logs all of it). When the
server cannot be reached, or dies mid-stream, the hook drains by itself with the same engine
and writes the ready marker so `/shutdown` waiters are still released.

Exit status: 0 drained (or only idle connections left), 3 deadline passed with connections
left, 4 Envoy was gone or unreachable, 1 internal failure.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

import httpx

from shutdown_manager.admin import AdminAddress, AdminClient
from shutdown_manager.drain import DrainEngine, DrainEvent, DrainPolicy
from shutdown_manager.logs import get_logger, log_event
from shutdown_manager.readiness import ReadyFile

CONNECT_TIMEOUT = 2.0
"""Seconds to reach the sidecar before draining alone: it answers in milliseconds if alive."""

log = get_logger("hook")


class SidecarUnavailable(Exception):
    """The sidecar server could not be asked, or stopped answering mid-drain."""


def format_progress(event: dict[str, Any]) -> str:
    return f"[{event.get('elapsed', 0):7.2f}s] {event.get('message', '')}"


async def ask_sidecar(control_socket: Path, out: TextIO) -> int:
    """Stream the sidecar's drain; return the exit status it ended with."""
    transport = httpx.AsyncHTTPTransport(uds=str(control_socket))
    timeout = httpx.Timeout(CONNECT_TIMEOUT, read=None)
    try:
        async with (
            httpx.AsyncClient(transport=transport, timeout=timeout, trust_env=False) as client,
            client.stream("POST", "http://shutdown-manager/drain") as response,
        ):
            if response.status_code != 200:
                raise SidecarUnavailable(f"sidecar answered {response.status_code}")
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                print(format_progress(event), file=out, flush=True)
                if event.get("event") == "finished":
                    return int(event["exit_code"])
    except (httpx.HTTPError, OSError, json.JSONDecodeError, KeyError, ValueError) as exc:
        raise SidecarUnavailable(str(exc) or type(exc).__name__) from exc
    raise SidecarUnavailable("sidecar closed the stream before the drain ended")


async def drain_alone(
    admin_address: AdminAddress,
    policy: DrainPolicy,
    ready_file: Path | None,
    admin_timeout: float,
    out: TextIO,
) -> int:
    """The same drain, run in the hook's own process."""
    marker = ReadyFile(ready_file)

    def relay(event: DrainEvent) -> None:
        print(format_progress(event.to_dict()), file=out, flush=True)

    async with AdminClient(admin_address, timeout=admin_timeout) as admin:
        engine = DrainEngine(admin, policy, [relay, log_event, marker.observe])
        try:
            report = await engine.run()
        except Exception as exc:  # a bug must still write the marker and exit non-zero
            report = engine.fail(exc)
    return report.outcome.exit_code


async def run_hook(
    control_socket: Path,
    admin_address: AdminAddress,
    policy: DrainPolicy,
    ready_file: Path | None,
    admin_timeout: float,
    out: TextIO = sys.stdout,
) -> int:
    try:
        return await ask_sidecar(control_socket, out)
    except SidecarUnavailable as exc:
        log.warning("sidecar at %s unavailable (%s): draining from the hook", control_socket, exc)
        print(f"sidecar unavailable ({exc}): draining from the hook", file=out, flush=True)
    return await drain_alone(admin_address, policy, ready_file, admin_timeout, out)
