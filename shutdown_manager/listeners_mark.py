"""A mark that Envoy's listeners were drained: `/drain_listeners` cannot be undone.

A failed health check is reversible, and a restarted sidecar restores it. Drained listeners
are not: Envoy keeps telling every client to go until it restarts, and nothing in its admin
API says so (its stats and /server_info look the same). So whoever drains them writes this
mark (a file beside the control socket, in the pod's shared emptyDir, which outlives a
container restart), with the time; a sidecar that starts later reports it, until Envoy has
restarted since (its uptime says when it started).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from shutdown_manager.logs import get_logger

SUFFIX = ".listeners-drained"
CLOCK_SLACK = 2.0
"""Seconds of doubt between the mark's clock and Envoy's uptime."""


def mark_path(control_socket: Path) -> Path:
    return control_socket.with_name(control_socket.name + SUFFIX)


class ListenersMark:
    def __init__(self, path: Path | None) -> None:
        self.path = path

    def record(self) -> None:
        """Envoy's listeners are being drained now (best effort: the drain goes on)."""
        if self.path is None:
            return
        try:
            self.path.write_text(json.dumps({"drained_at": time.time()}))
        except OSError as exc:
            get_logger("drain").warning("could not write %s: %s", self.path, exc.strerror)

    def drained(self, envoy_uptime: float | None) -> bool:
        """Whether the Envoy running now is one whose listeners were drained: a mark
        written after it started. A mark older than Envoy is removed (it restarted since)."""
        if self.path is None:
            return False
        try:
            drained_at = float(json.loads(self.path.read_text())["drained_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if envoy_uptime is not None and drained_at < time.time() - envoy_uptime - CLOCK_SLACK:
            self.path.unlink(missing_ok=True)
            return False
        return True
