"""ADS over grpc.aio: one task per stream, each with its own queue.

No lock is held while sending: a slow or stuck proxy only delays itself. What a stream sends,
in which order, and how it treats ACKs and NACKs is streams.py's business.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from xds_server.metrics import XdsMetrics
from xds_server.xds.cache import SnapshotStore
from xds_server.xds.streams import DeltaStream, SotwStream, Stream

log = logging.getLogger("xds_server.ads")


class AggregatedDiscovery(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        store: SnapshotStore,
        metrics: XdsMetrics,
        admit: Callable[[grpc.aio.ServicerContext[Any, Any]], str | None] | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.admit = admit
        """Returns why a stream's peer is refused (None: admitted); unset without mTLS."""
        self.streams: set[Stream] = set()
        self.answered = asyncio.Event()
        """Set whenever a proxy sends a request or goes away: when convergence may change."""

    async def StreamAggregatedResources(
        self,
        requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        await self._authorize(context)
        async for response in self._serve(SotwStream(self.store, self.metrics), requests):
            yield response

    async def DeltaAggregatedResources(
        self,
        requests: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
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
    ) -> AsyncIterator[Any]:
        self.streams.add(stream)
        self.metrics.proxies.inc()
        reader = asyncio.create_task(self._read(stream, requests))
        watcher = asyncio.create_task(self._watch(stream))
        getter: asyncio.Future[Any] | None = None
        try:
            while True:
                getter = asyncio.ensure_future(stream.out.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    return
                yield getter.result()
        finally:
            # Every task of the stream is cancelled here, the pending `get` included (left
            # alone, it was destroyed pending at exit). Not awaited: the stream's own task may
            # be the one being cancelled, and gRPC reports an await that raises there.
            for task in (getter, reader, watcher):
                if task is not None:
                    task.cancel()
            self.streams.discard(stream)
            self.metrics.proxies.dec()
            self.answered.set()

    async def _read(self, stream: SotwStream | DeltaStream, requests: AsyncIterator[Any]) -> None:
        async for request in requests:
            stream.handle(request, self.store.current)
            self.answered.set()

    async def _watch(self, stream: SotwStream | DeltaStream) -> None:
        serial = self.store.current.serial
        while True:
            snapshot = await self.store.wait_after(serial)
            serial = snapshot.serial
            stream.push(snapshot)
