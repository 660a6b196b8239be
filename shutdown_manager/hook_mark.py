"""A mark that a preStop hook is draining Envoy by itself, because the sidecar was unreachable.

A sidecar that starts meanwhile (its container restarted, or it came up late) finds Envoy
DRAINING and, seeing no deletion, would restore it to LIVE while the hook goes on to report
"drained": the kubelet would then stop an Envoy taking traffic. So the hook keeps this mark
fresh beside the control socket while it drains, and a sidecar that finds it fresh joins the
drain instead of undoing it. The hook lives only as long as its container: a mark left by a
hook that died (a liveness restart) goes stale within seconds, and the restore goes ahead.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

SUFFIX = ".hook-draining"
BEAT = 1.0
"""Seconds between two refreshes of the mark while the hook drains."""
FRESH = 5.0
"""A mark refreshed within this many seconds belongs to a hook still draining."""


def mark_path(control_socket: Path) -> Path:
    return control_socket.with_name(control_socket.name + SUFFIX)


class HookMark:
    def __init__(self, path: Path) -> None:
        self.path = path

    def beat(self) -> None:
        """Written whole (a rename): a reader never sees half of it. Best effort."""
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            temporary.write_text(json.dumps({"pid": os.getpid(), "at": time.time()}))
            temporary.replace(self.path)
        except OSError:
            pass

    async def keep_fresh(self) -> None:
        """Until cancelled, then removed: the drain ended."""
        try:
            while True:
                self.beat()
                await asyncio.sleep(BEAT)
        finally:
            self.path.unlink(missing_ok=True)

    def fresh(self) -> bool:
        try:
            beat = float(json.loads(self.path.read_text())["at"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return time.time() - beat < FRESH
