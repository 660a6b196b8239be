"""The ready marker: a file that says "the drain has ended", for waiters in another process.

Only needed when the hook had to drain by itself (the sidecar server was unreachable): the
server's `/shutdown` waiters watch for it. A marker left from an earlier run would release
the next waiter at once, so the server clears it at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

from shutdown_manager.drain import DrainEvent

WATCH_INTERVAL = 0.1
"""Seconds between looks for the marker: the same bound as the drain's own release latency."""


class ReadyFile:
    def __init__(self, path: Path | None) -> None:
        self.path = path

    def clear(self) -> None:
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def observe(self, event: DrainEvent) -> None:
        if event.kind == "finished":
            self.write(event)

    def write(self, event: DrainEvent) -> None:
        """Write atomically: a waiter never reads a half-written marker."""
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(event.to_dict()) + "\n")
        os.replace(tmp, self.path)

    @property
    def present(self) -> bool:
        return self.path is not None and self.path.exists()

    async def wait(self) -> None:
        if self.path is None:
            await asyncio.Event().wait()
            return
        while not self.path.exists():  # noqa: ASYNC110 - another process writes it
            await asyncio.sleep(WATCH_INTERVAL)
