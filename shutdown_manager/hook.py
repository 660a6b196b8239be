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
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from shutdown_manager.address import AdminAddress
from shutdown_manager.policy import DrainPolicy

CONNECT_TIMEOUT = 2.0
"""Seconds to reach the sidecar, and for its first answer, before draining alone: it answers
in milliseconds if alive."""

SILENCE_LIMIT = 10.0
"""Seconds without a line from a draining sidecar before the hook takes it for stuck (it
reports at least every second; a sidecar stopped by SIGSTOP or starved of CPU says nothing)."""

LAST_LOOK = 0.5
"""Seconds a drain taken over past its deadline still gets: fail the health check, look once."""

DEADLINE_GRACE = 5.0
"""Seconds past the drain's own deadline the hook still waits for the sidecar's last word."""


class SidecarUnavailable(Exception):
    """The sidecar server could not be asked, or stopped answering mid-drain."""


class PolicyRefused(Exception):
    """The sidecar refused the policy the hook was given (a user mistake: no drain)."""


def format_progress(event: dict[str, Any]) -> str:
    return f"[{event.get('elapsed', 0):7.2f}s] {event.get('message', '')}"


def _request_drain(control_socket: Path, given: dict[str, Any]) -> BinaryIO:
    """POST /drain as HTTP/1.0 with the policy flags the hook was given: the answer then
    streams unchunked until the server closes."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    sock.connect(str(control_socket))
    body = json.dumps({"policy": given}).encode()
    sock.sendall(
        b"POST /drain HTTP/1.0\r\nHost: shutdown-manager\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    stream = sock.makefile("rb")
    sock.close()  # the file object keeps the connection open
    status = stream.readline().split()
    if len(status) >= 2 and status[1] == b"400":  # a policy serve refuses: the user's mistake
        raise PolicyRefused(stream.read().decode(errors="replace").split("\r\n\r\n")[-1].strip())
    if len(status) < 2 or status[1] != b"200":
        raise SidecarUnavailable(
            f"sidecar answered {b' '.join(status[1:]).decode(errors='replace')!r}"
        )
    while stream.readline().strip():  # headers
        pass
    sock.settimeout(SILENCE_LIMIT)  # the drain may take its deadline, but never goes quiet
    return stream


def ask_sidecar(
    control_socket: Path, out: TextIO, deadline: float, given: dict[str, Any] | None = None
) -> int:
    """Stream the sidecar's drain, started with the policy flags `given` to the hook (the
    others are serve's); return the exit status it ended with. Gives up (raises
    SidecarUnavailable) on a sidecar that goes quiet, or has not finished by `deadline`
    (monotonic seconds): the hook then drains by itself."""
    try:
        with _request_drain(control_socket, given or {}) as stream:
            for line in stream:
                if time.monotonic() > deadline:
                    raise SidecarUnavailable("sidecar still draining past the deadline")
                if not line.strip():
                    continue
                event = json.loads(line)
                print(format_progress(event), file=out, flush=True)
                if event.get("event") == "policy":  # the deadline is the running drain's
                    deadline = time.monotonic() - event["elapsed"] + event["drain_timeout"]
                    deadline += DEADLINE_GRACE
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
    listeners_mark: Path | None = None,
    hook_mark: Path | None = None,
) -> int:
    """The same drain, run in the hook's own process (`hook_mark` kept fresh meanwhile, so
    a sidecar starting now joins it instead of restoring Envoy)."""
    import asyncio

    from shutdown_manager.admin import AdminClient
    from shutdown_manager.drain import DrainEngine, DrainEvent, Listener
    from shutdown_manager.hook_mark import HookMark
    from shutdown_manager.listeners_mark import ListenersMark
    from shutdown_manager.logs import log_event
    from shutdown_manager.readiness import ReadyFile

    marker = ReadyFile(ready_file)

    def relay(event: DrainEvent) -> None:
        print(format_progress(event.to_dict()), file=out, flush=True)

    async def drain() -> int:
        beating = asyncio.create_task(HookMark(hook_mark).keep_fresh()) if hook_mark else None
        try:
            async with AdminClient(admin_address, timeout=admin_timeout) as admin:
                observers: list[Listener] = [relay, log_event, marker.observe]
                mark = ListenersMark(listeners_mark).record
                engine = DrainEngine(admin, policy, observers, mark)
                try:
                    report = await engine.run()
                except Exception as exc:  # a bug must still write the marker and exit non-zero
                    report = engine.fail(exc)
        finally:
            if beating is not None:
                beating.cancel()
                await asyncio.gather(beating, return_exceptions=True)
        return report.outcome.exit_code

    return asyncio.run(drain())


def run_hook(
    control_socket: Path,
    admin_address: AdminAddress,
    policy: DrainPolicy,
    ready_file: Path | None,
    admin_timeout: float,
    out: TextIO = sys.stdout,
    given: dict[str, Any] | None = None,
) -> int:
    """`given`: the policy fields set on the hook's command line, sent to the sidecar (the
    drain alone, when the sidecar cannot be asked, runs with all of `policy`)."""
    started = time.monotonic()
    try:
        deadline = started + policy.drain_timeout + DEADLINE_GRACE
        return ask_sidecar(control_socket, out, deadline, given)
    except PolicyRefused as exc:
        print(f"shutdown-manager drain: error: the sidecar refused the policy: {exc}", file=out)
        return 2
    except SidecarUnavailable as exc:
        from shutdown_manager.logs import get_logger

        get_logger("hook").warning(
            "sidecar at %s unavailable (%s): draining from the hook", control_socket, exc
        )
        print(f"sidecar unavailable ({exc}): draining from the hook", file=out, flush=True)
    from shutdown_manager import hook_mark, listeners_mark

    remaining = _remaining(policy, started)
    marks = listeners_mark.mark_path(control_socket), hook_mark.mark_path(control_socket)
    return drain_alone(admin_address, remaining, ready_file, admin_timeout, out, *marks)


def _remaining(policy: DrainPolicy, started: float) -> DrainPolicy:
    """The policy for what is left of the drain once time was spent on a failed sidecar:
    the deadline and the minimum count from the hook's start, not from now."""
    spent = time.monotonic() - started
    timeout = max(LAST_LOOK, policy.drain_timeout - spent)
    minimum = min(timeout, max(0.0, policy.min_drain_duration - spent))
    return replace(policy, drain_timeout=timeout, min_drain_duration=minimum)
