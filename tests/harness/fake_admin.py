"""FAKE Envoy admin servers, for faults a real Envoy cannot be made to produce.

* `HungAdmin`: accepts connections on a unix socket and never answers.
* `GarbageStatsAdmin`: answers the drain's calls like Envoy, except that `/stats` returns
  junk; `/listeners` may report a real Envoy's listeners so the socket fallback can be seen
  counting that Envoy's real connections.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from aiohttp import web


class HungAdmin:
    """FAKE: a socket that accepts and never answers (a wedged Envoy main thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._held: list[asyncio.StreamWriter] = []

    async def start(self) -> HungAdmin:
        async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._held.append(writer)

        self._server = await asyncio.start_unix_server(hold, path=str(self.path))
        return self

    async def stop(self) -> None:
        for writer in self._held:
            writer.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)


class GarbageStatsAdmin:
    """FAKE: Envoy-like answers, but `/stats` is junk."""

    def __init__(self, path: Path, garbage: Any, listeners: dict[str, int] | None = None) -> None:
        self.path = path
        self.garbage = garbage
        self.listeners = listeners or {}
        self._runner: web.AppRunner | None = None

    async def start(self) -> GarbageStatsAdmin:
        app = web.Application()
        app.router.add_post("/healthcheck/fail", self._ok)
        app.router.add_get("/stats", self._stats)
        app.router.add_get("/listeners", self._listeners)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.path)).start()
        return self

    async def _ok(self, _: web.Request) -> web.Response:
        return web.Response(text="OK\n")

    async def _stats(self, _: web.Request) -> web.Response:
        if isinstance(self.garbage, bytes):
            return web.Response(body=self.garbage, content_type="application/json")
        return web.json_response(self.garbage)

    async def _listeners(self, _: web.Request) -> web.Response:
        statuses = [
            {
                "name": name,
                "local_address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            }
            for name, port in self.listeners.items()
        ]
        return web.json_response({"listener_statuses": statuses})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
