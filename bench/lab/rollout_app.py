"""A backend pod's app for rollout tests: answers GETs with its name, records every POST id
it executes (one line each, flushed before the answer), streams on /stream, and treats
SIGTERM as real apps do (`--on-sigterm`); /ws echoes WebSocket messages and is closed with
1001 (going away) at shutdown:

* graceful: aiohttp's own shutdown: stop accepting, finish what is in flight (5 s at most),
  close idle keep-alive connections (what most frameworks do);
* exit: exit at once, whatever is in flight;
* ignore: carry on until SIGKILL;
* unready: keep serving `--linger` seconds (its readiness probe fails meanwhile), then as
  graceful.

Idle keep-alive connections are closed after 5 s, as Node, uvicorn and gunicorn do. With
`--h2c` the app is served by hypercorn, HTTP/2 without TLS beside HTTP/1.1 (GETs and POSTs;
its graceful shutdown sends GOAWAY).
Run: python -m bench.lab.rollout_app --host 127.0.0.5 --port 8080 --record FILE ...
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from typing import IO, Any

from aiohttp import WSCloseCode, web

KEEPALIVE_S = 5.0
SHUTDOWN_S = 5.0
"""How long a graceful shutdown waits for what is in flight. Also how long a request that
lands on a connection aiohttp is closing hangs before the exit resets it (the race no retry
may fix, DESIGN.md §8): bounded here, so it ends as Envoy's 503 within the clients' 10 s."""
BEHAVIOURS = ("graceful", "exit", "ignore", "unready")


def make_app(name: str, record: IO[str]) -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=name)

    async def order(request: web.Request) -> web.Response:
        await request.read()
        record.write(request.headers.get("x-id", "?") + "\n")
        record.flush()
        return web.Response(text=name)

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(int(request.query.get("chunks", "10"))):
            await response.write(b"x" * 64)
            await asyncio.sleep(0.1)
        await response.write_eof()
        return response

    sockets: set[web.WebSocketResponse] = set()

    async def echo(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        sockets.add(socket)
        try:
            async for message in socket:
                await socket.send_str(message.data)
        finally:
            sockets.discard(socket)
        return socket

    async def going_away(app: web.Application) -> None:
        for socket in list(sockets):  # what a well-behaved app does at shutdown
            await socket.close(code=WSCloseCode.GOING_AWAY, message=b"shutting down")

    app = web.Application()
    app.on_shutdown.append(going_away)
    app.router.add_get("/ws", echo)
    app.router.add_get("/", hello)
    app.router.add_post("/order", order)
    app.router.add_get("/stream", stream)
    return app


async def serve(args: argparse.Namespace, record: IO[str]) -> None:
    runner = web.AppRunner(
        make_app(args.name, record), keepalive_timeout=KEEPALIVE_S, access_log=None
    )
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port, shutdown_timeout=SHUTDOWN_S).start()
    stop = asyncio.Event()
    _on_sigterm(args, stop)
    await stop.wait()
    await runner.cleanup()  # stop accepting, finish in flight, close idle connections


def h2c_app(name: str, record: IO[str]) -> Any:
    """The same answers as an ASGI app, for hypercorn: HTTP/2 without TLS (h2c, as Envoy
    speaks it to a `kubernetes.io/h2c` port) beside HTTP/1.1."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        if scope["path"] == "/order":
            headers = dict(scope["headers"])
            record.write(headers.get(b"x-id", b"?").decode() + "\n")
            record.flush()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": name.encode()})

    return app


async def serve_h2c(args: argparse.Namespace, record: IO[str]) -> None:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"{args.host}:{args.port}"]
    config.keep_alive_timeout = KEEPALIVE_S
    config.graceful_timeout = SHUTDOWN_S
    config.accesslog = None
    stop = asyncio.Event()
    _on_sigterm(args, stop)
    await hypercorn_serve(h2c_app(args.name, record), config, shutdown_trigger=stop.wait)


def _on_sigterm(args: argparse.Namespace, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    if args.on_sigterm == "exit":
        loop.add_signal_handler(signal.SIGTERM, lambda: os._exit(0))
    elif args.on_sigterm == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif args.on_sigterm == "unready":
        loop.add_signal_handler(signal.SIGTERM, lambda: loop.call_later(args.linger, stop.set))
    else:
        loop.add_signal_handler(signal.SIGTERM, stop.set)


async def run(args: argparse.Namespace) -> None:
    with open(args.record, "a", encoding="utf-8") as record:  # noqa: ASYNC230 - once, at start
        if args.h2c:
            await serve_h2c(args, record)
        else:
            await serve(args, record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--on-sigterm", choices=BEHAVIOURS, default="graceful")
    parser.add_argument("--linger", type=float, default=2.0)
    parser.add_argument("--h2c", action="store_true", help="serve h2c too (hypercorn)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
