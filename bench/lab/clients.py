"""Clients that hold a drain open in the ways real ones do, and count every failure."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class Tally:
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    closes: int = 0
    """Responses that carried `Connection: close` (Envoy draining the connection)."""
    resent: int = 0
    """HTTP/2 requests sent again after a GOAWAY said the server never processed them."""
    opened: int = 0
    """Connections the HTTP/2 load opened so far (a GOAWAY makes it open another)."""

    def record(self, response: httpx.Response) -> None:
        if response.status_code == 200:
            self.ok += 1
        else:
            self.failed += 1
            self.errors.append(f"HTTP {response.status_code}")
        if response.headers.get("connection", "").lower() == "close":
            self.closes += 1

    def fail(self, exc: BaseException) -> None:
        self.failed += 1
        self.errors.append(repr(exc))


def http_client(http2: bool = False) -> httpx.AsyncClient:
    """A pooling client; HTTP/2 is prior knowledge over cleartext (Envoy's AUTO codec)."""
    return httpx.AsyncClient(
        http1=not http2, http2=http2, timeout=httpx.Timeout(30.0), trust_env=False
    )


async def steady_load(
    url: str, stop: asyncio.Event, tally: Tally, http2: bool = False, pause: float = 0.01
) -> None:
    """Back-to-back requests on pooled connections until `stop` is set."""
    async with http_client(http2) as client:
        while not stop.is_set():
            try:
                tally.record(await client.get(url))
            except httpx.HTTPError as exc:
                tally.fail(exc)
            await asyncio.sleep(pause)


async def multiplexed_load(url: str, stop: asyncio.Event, tally: Tally, streams: int = 8) -> None:
    """HTTP/2: many concurrent streams over one connection."""
    async with http_client(http2=True) as client:
        while not stop.is_set():
            results = await asyncio.gather(
                *(client.get(url) for _ in range(streams)), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException):
                    tally.fail(result)
                else:
                    tally.record(result)
            await asyncio.sleep(0.01)


async def streaming_request(url: str, tally: Tally) -> float:
    """One long streaming response read to the end; returns the monotonic time it ended."""
    async with http_client() as client:
        try:
            async with client.stream("GET", url) as response:
                body = b"".join([chunk async for chunk in response.aiter_bytes()])
            if response.status_code == 200 and body.count(b"chunk") > 0:
                tally.ok += 1
            else:
                tally.failed += 1
        except httpx.HTTPError as exc:
            tally.fail(exc)
    return time.monotonic()


class TcpConnection:
    """A raw TCP connection through Envoy's TCP proxy (invisible to HTTP manager stats)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> TcpConnection:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def request(self) -> bool:
        """An HTTP/1.1 request written by hand through the tunnel; True on a 200."""
        assert self.reader is not None
        assert self.writer is not None
        self.writer.write(b"GET / HTTP/1.1\r\nHost: tcp\r\n\r\n")
        await self.writer.drain()
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        await self.reader.readexactly(length)
        return head.startswith(b"HTTP/1.1 200")

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()
