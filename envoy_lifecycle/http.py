"""How every HTTP server of ours is run (the sidecar's, the control plane's)."""

from __future__ import annotations

from typing import Any

IDLE_TIMEOUT = 5.0
"""Seconds a connection may go without a complete request: idle between requests, or
dribbling a request's head one byte at a time (from its first byte, aiohttp counts). Probes
and scrapers reconnect at no cost; a slow-loris client no longer holds a connection."""

HTTP_SERVER_OPTIONS: dict[str, Any] = {
    "access_log": None,
    "handle_signals": False,
    "keepalive_timeout": IDLE_TIMEOUT,
}
