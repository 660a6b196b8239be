"""An upstream for Envoy: quick answers, slow answers and long streaming responses.

Also the echo backend of the kind cluster (deploy/kind mounts this file from a ConfigMap and
runs it with our image's Python): `python backend.py --host 0.0.0.0 --port 8080`. So it
needs nothing but aiohttp and the standard library.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

NAME = web.AppKey("name", str)


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text=request.app[NAME])


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("s", "1")))
    return web.Response(text="slow ok")


async def _stream(request: web.Request) -> web.StreamResponse:
    """`n` chunks, one every `d` seconds: a long response that ends on its own."""
    response = web.StreamResponse()
    await response.prepare(request)
    for _ in range(int(request.query.get("n", "5"))):
        await response.write(b"chunk\n")
        await asyncio.sleep(float(request.query.get("d", "0.5")))
    await response.write_eof()
    return response


class Backend:
    """An aiohttp server on 127.0.0.1 with an OS-chosen port."""

    def __init__(self, name: str = "ok", host: str = "127.0.0.1", port: int = 0) -> None:
        self.name = name
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> Backend:
        app = web.Application()
        app[NAME] = self.name
        app.router.add_get("/slow", _slow)
        app.router.add_get("/stream", _stream)
        app.router.add_get("/{tail:.*}", _hello)  # any other path answers with the name
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def _serve_forever(name: str, host: str, port: int) -> None:
    backend = await Backend(name, host, port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await backend.stop()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="the e2e echo backend")
    parser.add_argument("--name", default="echo", help="what / answers")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind")
    parser.add_argument("--port", type=int, default=8080, help="port to bind")
    options = parser.parse_args()
    asyncio.run(_serve_forever(options.name, options.host, options.port))
