"""ADS over grpc.aio: one task per stream, each with its own queue of serialized responses.

No lock is held while sending: a slow or stuck proxy only delays itself. Responses are bytes
built once per snapshot and shared (streams.py); gRPC is told not to serialize them again.
What each stream holds is bounded: one response per type waits for its ACK, and a proxy that
has not answered a response for `stuck_after` seconds is dropped (it reconnects, or it is
gone). Large writes in flight at once are bounded too, so a thousand proxies syncing at once
do not each hold a copy of a 10 MB response in gRPC's buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from xds_server.metrics import XdsMetrics
from xds_server.xds.cache import SnapshotStore
from xds_server.xds.streams import DeltaStream, SotwStream, Stream

log = logging.getLogger("xds_server.ads")
SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
STUCK_AFTER = 60.0
"""Seconds a proxy may leave a response unanswered before its stream is dropped: Envoy
answers each one (ACK or NACK) once applied, in well under a second even for 100,000 routes."""
LARGE_WRITE = 256 * 1024
"""A response at least this large counts against `WriteBudget`."""
WRITE_BUDGET = 64 * 2**20
"""Bytes of large responses in flight at once: gRPC copies each stream's response into its
own buffers (whether or not the proxy reads) and frees them as the proxy reads them."""
WRITE_HOLD = 5.0
"""Seconds a response may hold its share of the budget before the proxy answers it: one that
reads slowly then goes on without it, so it cannot hold the others back."""


class WriteBudget:
    """Bytes of large responses in flight at once (sent, not yet answered by the proxy): past
    the budget, a stream waits for others' answers (one larger than the budget waits for it
    all). A thousand proxies syncing at once then hold a few responses' worth of buffers, not
    a thousand."""

    def __init__(self, capacity: int = WRITE_BUDGET) -> None:
        self.capacity = capacity
        self.used = 0
        self._waiters: list[asyncio.Future[None]] = []

    async def acquire(self, size: int) -> Share:
        if size < LARGE_WRITE:
            return Share(self, 0)
        size = min(size, self.capacity)
        while self.used + size > self.capacity:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        self.used += size
        return Share(self, size)

    def _free(self, size: int) -> None:
        self.used -= size
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class Share:
    """One write's part of the budget, given back once (when written, or when it took
    longer than WRITE_HOLD)."""

    def __init__(self, budget: WriteBudget, size: int) -> None:
        self.budget, self.size = budget, size

    def release(self) -> None:
        size, self.size = self.size, 0
        if size:
            self.budget._free(size)


class AggregatedDiscovery:
    def __init__(
        self,
        store: SnapshotStore,
        metrics: XdsMetrics,
        admit: Callable[[grpc.aio.ServicerContext[Any, Any]], str | None] | None = None,
        stuck_after: float = STUCK_AFTER,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.admit = admit
        """Returns why a stream's peer is refused (None: admitted); unset without mTLS."""
        self.stuck_after = stuck_after
        self.streams: dict[Stream, asyncio.Task[Any]] = {}
        self.answered = asyncio.Event()
        """Set whenever a proxy sends a request or goes away: when convergence may change."""
        self.budget = WriteBudget()

    def handler(self) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
        """Both ADS methods, their responses already serialized by the streams."""
        methods = {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self.StreamAggregatedResources,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=_as_is,
            ),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self.DeltaAggregatedResources,
                request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                response_serializer=_as_is,
            ),
        }
        return grpc.method_handlers_generic_handler(SERVICE, methods)

    async def StreamAggregatedResources(
        self,
        requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[bytes]:
        await self._authorize(context)
        async for response in self._serve(SotwStream(self.store, self.metrics), requests):
            yield response

    async def DeltaAggregatedResources(
        self,
        requests: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[bytes]:
        await self._authorize(context)
        async for response in self._serve(DeltaStream(self.store, self.metrics), requests):
            yield response

    async def _authorize(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        refusal = self.admit(context) if self.admit is not None else None
        if refusal is not None:
            log.warning("stream from %s refused: %s", context.peer(), refusal)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)

    async def _serve(
        self, stream: SotwStream | DeltaStream, requests: AsyncIterator[Any]
    ) -> AsyncIterator[bytes]:
        task = asyncio.current_task()
        assert task is not None
        self.streams[stream] = task
        self.metrics.proxies.inc()
        reader = asyncio.create_task(self._read(stream, requests))
        try:
            while True:
                response = await stream.out.get()
                if response is None:
                    return  # the proxy closed its side, or its requests failed
                share = await self.budget.acquire(len(response))
                if share.size:  # given back when the proxy answers it, or after WRITE_HOLD
                    stream.shares.append(share)
                    asyncio.get_running_loop().call_later(WRITE_HOLD, share.release)
                if stream.waiting_since is None:
                    stream.waiting_since = time.monotonic()
                yield response
        finally:
            # Every task of the stream is cancelled here. Not awaited: the stream's own task
            # may be the one being cancelled, and gRPC reports an await that raises there.
            reader.cancel()
            _release(stream)
            self.streams.pop(stream, None)
            self.metrics.proxies.dec()
            self.answered.set()

    async def _read(self, stream: SotwStream | DeltaStream, requests: AsyncIterator[Any]) -> None:
        try:
            async for request in requests:
                _release(stream)  # what it answers has left gRPC's buffers
                stream.handle(request, self.store.current)
                self.answered.set()
        finally:
            stream.out.put_nowait(None)  # the end of the stream, for `_serve`

    async def push_snapshots(self) -> NoReturn:
        """Forever: push each new snapshot to every stream, in one pass (one task, not one
        per stream woken for it). A stream that connects meanwhile is pushed by its own
        requests."""
        serial = self.store.current.serial
        while True:
            snapshot = await self.store.wait_after(serial)
            serial = snapshot.serial
            for stream in list(self.streams):
                stream.push(snapshot)

    async def drop_stuck(self) -> NoReturn:
        """Forever: drop every stream whose proxy has left a response unanswered for
        `stuck_after` seconds (it holds memory and a write slot, and helps nobody)."""
        while True:
            await asyncio.sleep(min(self.stuck_after / 4, 1.0))
            self.drop_stuck_now(time.monotonic())

    def drop_stuck_now(self, now: float) -> int:
        dropped = 0
        for stream, task in list(self.streams.items()):
            since = stream.waiting_since
            if since is not None and now - since > self.stuck_after and not task.done():
                log.warning(
                    "dropping the stream of %s: it left a response unanswered for %.0f s",
                    stream.node,
                    now - since,
                    extra={"fields": {"node": stream.node}},
                )
                self.metrics.streams_dropped.inc()
                with contextlib.suppress(RuntimeError):
                    task.cancel()
                dropped += 1
        return dropped


def _release(stream: Stream) -> None:
    for share in stream.shares:
        share.release()
    stream.shares.clear()


def _as_is(response: bytes) -> bytes:
    return response
