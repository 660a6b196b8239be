"""An HTTP/2 load client that handles GOAWAY the way RFC 9113 section 6.8 asks.

Streams at or below a GOAWAY's last-stream-id must complete; streams above it were never
processed by the server and may be sent again on a new connection (what Go, browsers and
gRPC clients do). Such re-sends are counted apart (`resent`), never as successes of the
first attempt; anything else that ends a stream early (a reset, a connection lost with the
stream in flight) is a failure.

h2load is not used for this: in duration mode it counts requests it could not even submit
after a GOAWAY as failed, which says nothing about the server.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
from hyperframe.frame import Frame, GoAwayFrame

from bench.lab.clients import Tally


class _GracefulGoaway(h2.connection.H2Connection):
    """python-hyper's h2 closes the whole connection on any GOAWAY, and then rejects frames
    of the streams the server promised to finish (Envoy's drain sends a graceful GOAWAY
    first). Keep the connection open for receiving; no new stream is opened on it."""

    def _receive_goaway_frame(
        self, frame: GoAwayFrame
    ) -> tuple[list[Frame], list[h2.events.Event]]:
        frames, events = super()._receive_goaway_frame(frame)
        self.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        return frames, events


class Resend(Exception):
    """The server never processed this stream (above GOAWAY's last-stream-id, or refused)."""


class StreamFailed(Exception):
    """The stream ended without a complete response."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h2 = _GracefulGoaway(h2.config.H2Configuration(client_side=True))
        self.h2.initiate_connection()
        self.writer.write(self.h2.data_to_send())
        self.pending: dict[int, asyncio.Future[int]] = {}
        self.statuses: dict[int, int] = {}
        self.goaway_last: int | None = None
        self.closed = False
        self.task = asyncio.create_task(self._read())

    @property
    def usable(self) -> bool:
        return not self.closed and self.goaway_last is None

    async def get(self, authority: str, path: str) -> int:
        stream = self.h2.get_next_available_stream_id()
        headers = [
            (":method", "GET"),
            (":path", path),
            (":scheme", "http"),
            (":authority", authority),
        ]
        self.h2.send_headers(stream, headers, end_stream=True)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pending[stream] = future
        self.writer.write(self.h2.data_to_send())
        return await future

    async def _read(self) -> None:
        try:
            while data := await self.reader.read(65536):
                for event in self.h2.receive_data(data):
                    self._handle(event)
                self.writer.write(self.h2.data_to_send())
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            self.closed = True
            for stream, future in list(self.pending.items()):
                self._settle(stream, future, lost="connection closed with the stream in flight")
            self.writer.close()

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self.statuses[event.stream_id] = int(dict(event.headers)[b":status"])
        elif isinstance(event, h2.events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            future = self.pending.pop(event.stream_id, None)
            if future is not None and not future.done():
                future.set_result(self.statuses.pop(event.stream_id, 0))
        elif isinstance(event, h2.events.StreamReset):
            future = self.pending.pop(event.stream_id, None)
            if future is not None and not future.done():
                if event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM:
                    future.set_exception(Resend("refused"))
                else:
                    future.set_exception(StreamFailed(f"reset {event.error_code!r}"))
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway_last = event.last_stream_id or 0
            for stream, future in list(self.pending.items()):
                if stream > self.goaway_last:
                    self._settle(stream, future, lost=None)

    def _settle(self, stream: int, future: asyncio.Future[int], lost: str | None) -> None:
        self.pending.pop(stream, None)
        if future.done():
            return
        if self.goaway_last is not None and stream > self.goaway_last:
            future.set_exception(Resend("above GOAWAY last-stream-id"))
        else:
            future.set_exception(StreamFailed(lost or "lost"))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.h2.close_connection()
            self.writer.write(self.h2.data_to_send())
        self.writer.close()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


async def h2_load(
    url: str, stop: asyncio.Event, tally: Tally, streams: int = 8, connections: int = 2
) -> int:
    """`connections` multiplexed connections with `streams` requests in flight on each, until
    `stop`; returns how many connections were opened in all."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    authority, path = parts.netloc, parts.path or "/"
    opened = 0

    async def one_connection() -> None:
        current: list[_Connection] = []
        opening = asyncio.Lock()  # the workers share one connection: open it once

        async def connection() -> _Connection:
            nonlocal opened
            async with opening:
                if not current or not current[0].usable:
                    reader, writer = await asyncio.open_connection(host, port)
                    current.append(_Connection(reader, writer))
                    opened += 1
                    tally.opened += 1
            return current[-1]

        async def worker() -> None:
            while not stop.is_set():
                try:
                    status = await (await connection()).get(authority, path)
                except Resend:
                    tally.resent += 1
                    continue
                except (StreamFailed, OSError, h2.exceptions.ProtocolError) as exc:
                    tally.fail(exc)
                    continue
                if status == 200:
                    tally.ok += 1
                else:
                    tally.failed += 1
                    tally.errors.append(f"HTTP {status}")

        try:
            await asyncio.gather(*(worker() for _ in range(streams)))
        finally:
            for conn in current:
                await conn.close()  # the drained ones too: none is left open

    await asyncio.gather(*(one_connection() for _ in range(connections)))
    return opened
