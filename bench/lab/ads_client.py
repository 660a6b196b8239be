"""A synthetic ADS client: subscribes like Envoy does over delta (routes with their virtual
hosts over VHDS), ACKs everything, records when each state of its routes arrived. A `stuck`
client opens its stream and never reads."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from xds_server.translate.type_urls import CLUSTER, ENDPOINT, LISTENER, ROUTE, VHOST
from xds_server.xds.cache import length_delimited, named_digest


def route_configs_of(listeners: Iterable[any_pb2.Any]) -> list[str]:
    """The route configurations the listeners' HTTP connection managers name over RDS: what
    Envoy subscribes to (an Ingress without TLS has no HTTPS listener, so no `ingress_https`)."""
    names: set[str] = set()
    for packed in listeners:
        listener = listener_pb2.Listener.FromString(packed.value)
        chains = [*listener.filter_chains, listener.default_filter_chain]
        for chain in chains:
            for network_filter in chain.filters:
                if network_filter.typed_config.type_url.endswith(".HttpConnectionManager"):
                    manager = http_connection_manager_pb2.HttpConnectionManager.FromString(
                        network_filter.typed_config.value
                    )
                    if manager.HasField("rds"):
                        names.add(manager.rds.route_config_name)
    return sorted(names)


DELTA_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
SOTW_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


def _fields(data: bytes) -> Iterator[tuple[int, int, int]]:
    """The top-level length-delimited fields of a message (every field of both responses
    is one), each as (number, start, end): a scan, nothing copied or parsed."""
    at = 0
    while at < len(data):
        tag, at = _varint(data, at)
        length, at = _varint(data, at)
        yield tag >> 3, at, at + length
        at += length


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def _light(data: bytes, message: Any, heavy: str, named: bool = False) -> Any:
    """`message` from `data` without the resources of type `heavy` (left out; with `named`,
    a delta Resource's name and version are read, its body skipped)."""
    fields = list(_fields(data))
    type_url = next((data[a:b].decode() for n, a, b in fields if n == 4), "")
    for number, start, end in fields:
        if number == 2 and type_url == heavy:
            if not named:
                continue  # the server's version says what it needs to know of them
            resource = message.resources.add()
            head = data[start:end]
            for inner, a, b in _fields(head):
                if inner == 1:
                    resource.version = head[a:b].decode()
                elif inner == 3:
                    resource.name = head[a:b].decode()
            continue
        message.MergeFromString(length_delimited(number, data[start:end]))
    return message


def light_delta(data: bytes) -> discovery_pb2.DeltaDiscoveryResponse:
    """A DeltaDiscoveryResponse without its virtual hosts' bodies (the server's version says
    what a synthetic proxy needs to know of them)."""
    response: discovery_pb2.DeltaDiscoveryResponse = _light(
        data, discovery_pb2.DeltaDiscoveryResponse(), VHOST
    )
    return response


def light_delta_named(data: bytes) -> discovery_pb2.DeltaDiscoveryResponse:
    """`light_delta` that keeps each virtual host's name and version (a proxy that reconnects
    says what it has)."""
    response: discovery_pb2.DeltaDiscoveryResponse = _light(
        data, discovery_pb2.DeltaDiscoveryResponse(), VHOST, named=True
    )
    return response


def light_sotw(data: bytes) -> discovery_pb2.DiscoveryResponse:
    """A DiscoveryResponse without its route configurations' bodies (see `light_delta`)."""
    response: discovery_pb2.DiscoveryResponse = _light(
        data, discovery_pb2.DiscoveryResponse(), ROUTE
    )
    return response


class SyntheticProxy:
    def __init__(
        self,
        address: str,
        node: str,
        stuck: bool = False,
        route_configs: list[str] | None = None,
        digest: bool = True,
        resume: dict[str, dict[str, str]] | None = None,
        reconnect: bool = False,
        addresses: list[str] | None = None,
    ) -> None:
        self.address = address
        self.digest = digest
        self.resume = resume
        """What it has, by type (`has` of a client that ran before): it reconnects as Envoy
        does, every subscription at once with the versions it holds."""
        self.has: dict[str, dict[str, str]] = {}
        """Names and versions it holds, by type."""
        self.resources_received = 0
        self.reconnect = reconnect
        self.addresses = addresses or [address]
        """Where it reconnects, in turn (the first is `address`)."""
        self.reconnects = 0
        """False: its routes' state is the server's `system_version_info` of the last virtual
        hosts it got, not a digest of each (a thousand clients cannot hash 10,000 hosts each
        on the server's two cores)."""
        self.route_configs = route_configs
        """The route configurations it asks for: those its listeners name (None), as Envoy."""
        self._configs: set[str] = set()
        self.node = node
        self.stuck = stuck
        self.queue: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest] = asyncio.Queue()
        self.vhosts: dict[str, str] = {}  # virtual host name -> version
        self.routes_version = ""
        """The digest of the virtual hosts it has (see `versions_digest`), once per update:
        kept per resource, as the server keeps it, so 100 clients of 2,000 virtual hosts do
        not spend the benchmark's CPU hashing them all again on every change."""
        self._digest = 0
        self.arrivals: list[tuple[float, str]] = []  # (monotonic, routes digest)
        self.bytes = 0
        self.responses = 0
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None

    async def start(self) -> SyntheticProxy:
        self._connect()
        call = self._call()
        self._task = asyncio.create_task(self._idle() if self.stuck else self._run(call))
        return self

    def _connect(self) -> None:
        self._channel = grpc.aio.insecure_channel(
            self.address,
            options=[
                ("grpc.max_receive_message_length", 64 * 2**20),
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )

    def _call(self) -> grpc.aio.StreamStreamCall:  # type: ignore[type-arg]
        """A new stream: a fresh one, or (`resume`) saying what it has, as Envoy does."""
        assert self._channel is not None
        self.queue = asyncio.Queue()
        node = base_pb2.Node(id=self.node, cluster="synthetic")
        if self.resume is not None:
            self._resumed(node, self.resume)
        else:
            for type_url in (CLUSTER, LISTENER):
                request = discovery_pb2.DeltaDiscoveryRequest(node=node, type_url=type_url)
                self.queue.put_nowait(request)
        if self.digest:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
            call: grpc.aio.StreamStreamCall = stub.DeltaAggregatedResources()  # type: ignore[type-arg]
        else:  # read what it needs without parsing 10,000 virtual hosts a change
            call = self._channel.stream_stream(
                DELTA_METHOD,
                request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
                response_deserializer=light_delta_named if self.reconnect else light_delta,
            )(None)
        if self._writer is not None:
            self._writer.cancel()
        self._writer = asyncio.create_task(self._write(call, self.queue))
        return call

    async def _run(self, call: grpc.aio.StreamStreamCall) -> None:  # type: ignore[type-arg]
        """Read the stream; open another when it ends (on the next of `addresses`), saying
        what it has, with `reconnect`; without, only when it ended before its first
        response (a connection refused or timed out under load: Envoy retries too)."""
        while True:
            before = self.responses
            await self._read(call)
            if not self.reconnect and self.responses > before:
                return
            self.reconnects += 1
            if self.reconnect:
                self.resume = {type_url: dict(held) for type_url, held in self.has.items()}
            await asyncio.sleep(random.uniform(0.05, 0.3))
            if len(self.addresses) > 1:
                self.addresses.append(self.addresses.pop(0))
                self.address = self.addresses[0]
                if self._channel is not None:
                    await self._channel.close(None)
                self._connect()
            call = self._call()

    def _resumed(self, node: base_pb2.Node, has: dict[str, dict[str, str]]) -> None:
        for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE, VHOST):
            held = has.get(type_url, {})
            names = sorted(held) if type_url in (ENDPOINT, ROUTE) else []
            self.has[type_url] = dict(held)
            self.queue.put_nowait(
                discovery_pb2.DeltaDiscoveryRequest(
                    node=node,
                    type_url=type_url,
                    resource_names_subscribe=names,
                    initial_resource_versions=held,
                )
            )
        if not self.digest:
            return  # its routes' state stays the server's version it last got
        self._digest = 0
        for name, version in has.get(VHOST, {}).items():
            self.vhosts[name] = version
            self._digest ^= named_digest(name, version)
        self.routes_version = f"{self._digest:016x}" if self.vhosts else ""

    @staticmethod
    async def _write(
        call: grpc.aio.StreamStreamCall,  # type: ignore[type-arg]
        queue: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest],
    ) -> None:
        """Requests as they come, on this call (a task, not a generator: a call that ends
        leaves nothing pending behind)."""
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            while True:
                await call.write(await queue.get())

    async def _idle(self) -> None:
        await asyncio.Event().wait()  # never reads: flow control fills up on the server

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:  # type: ignore[type-arg]
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for response in call:
                self._handle(response)

    def _handle(self, response: discovery_pb2.DeltaDiscoveryResponse) -> None:
        self.responses += 1
        self.bytes += response.ByteSize()
        self.resources_received += len(response.resources)
        held = self.has.setdefault(response.type_url, {})
        for resource in response.resources:
            held[resource.name] = resource.version
        for name in response.removed_resources:
            held.pop(name, None)
        names = [r.name for r in response.resources]
        if self.resume is not None and response.type_url in (CLUSTER, LISTENER, ROUTE):
            names = []  # subscribed already, as Envoy does when it reconnects
        ack = discovery_pb2.DeltaDiscoveryRequest(
            type_url=response.type_url, response_nonce=response.nonce
        )
        self.queue.put_nowait(ack)
        if response.type_url == CLUSTER and names:
            self._subscribe(ENDPOINT, names)
        elif response.type_url == LISTENER and names:
            configs = self.route_configs or route_configs_of(r.resource for r in response.resources)
            new = sorted(set(configs) - self._configs)
            self._configs |= set(new)
            if new:
                self._subscribe(ROUTE, new)
        elif response.type_url == ROUTE and names:
            self.queue.put_nowait(discovery_pb2.DeltaDiscoveryRequest(type_url=VHOST))
        elif response.type_url == VHOST and not self.digest:
            self.routes_version = response.system_version_info
            self.arrivals.append((time.monotonic(), self.routes_version))
        elif response.type_url == VHOST:
            for resource in response.resources:
                self._forget(resource.name)
                self.vhosts[resource.name] = resource.version
                self._digest ^= named_digest(resource.name, resource.version)
            for name in response.removed_resources:
                self._forget(name)
            self.routes_version = f"{self._digest:016x}" if self.vhosts else ""
            self.arrivals.append((time.monotonic(), self.routes_version))

    def _forget(self, name: str) -> None:
        version = self.vhosts.pop(name, None)
        if version is not None:
            self._digest ^= named_digest(name, version)

    def _subscribe(self, type_url: str, names: list[str]) -> None:
        self.queue.put_nowait(
            discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=names)
        )

    async def has_route_version(self, version: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.routes_version == version:
                return True
            await asyncio.sleep(0.005)
        return False

    async def stop(self) -> None:
        for task in (self._task, self._writer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._channel is not None:
            await self._channel.close(None)


class SotwProxy:
    """A synthetic state-of-the-world ADS client: wildcard clusters and listeners, then the
    endpoints and route configurations they name, ACKing everything as Envoy does. Its routes'
    state is the RDS `version_info` (the server's hash of what it sent): reading that costs
    nothing per route, so a thousand of them fit beside the server on two cores."""

    def __init__(self, address: str, node: str, route_configs: list[str] | None = None) -> None:
        """`route_configs`: what it asks for; None: what its listeners name, as Envoy."""
        self.address = address
        self.node = node
        self.route_configs = route_configs
        self.queue: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()
        self.routes_version = ""
        self.arrivals: list[tuple[float, str]] = []
        self.bytes = 0
        self.responses = 0
        self._names: dict[str, list[str]] = {}
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> SotwProxy:
        self._channel = grpc.aio.insecure_channel(
            self.address, options=[("grpc.max_receive_message_length", 64 * 2**20)]
        )
        node = base_pb2.Node(id=self.node, cluster="synthetic")
        for type_url in (CLUSTER, LISTENER):
            self.queue.put_nowait(discovery_pb2.DiscoveryRequest(node=node, type_url=type_url))
        call = self._channel.stream_stream(
            SOTW_METHOD,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=light_sotw,
        )(self._requests())
        self._task = asyncio.create_task(self._read(call))
        return self

    async def _requests(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while True:
            yield await self.queue.get()

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:  # type: ignore[type-arg]
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for response in call:
                self._handle(response)

    def _handle(self, response: discovery_pb2.DiscoveryResponse) -> None:
        self.responses += 1
        self.bytes += response.ByteSize()
        self._ack(response.type_url, response.version_info, response.nonce)
        if response.type_url == CLUSTER:
            self._ask(ENDPOINT, [self._name_of(r.value) for r in response.resources])
        elif response.type_url == LISTENER:
            self._ask(ROUTE, self.route_configs or route_configs_of(response.resources))
        elif response.type_url == ROUTE and response.version_info:
            self.routes_version = response.version_info
            self.arrivals.append((time.monotonic(), self.routes_version))

    @staticmethod
    def _name_of(cluster: bytes) -> str:
        return str(cluster_pb2.Cluster.FromString(cluster).name)

    def _ask(self, type_url: str, names: list[str]) -> None:
        if self._names.get(type_url) == names:
            return
        self._names[type_url] = names
        self.queue.put_nowait(
            discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names)
        )

    def _ack(self, type_url: str, version: str, nonce: str) -> None:
        self.queue.put_nowait(
            discovery_pb2.DiscoveryRequest(
                type_url=type_url,
                version_info=version,
                response_nonce=nonce,
                resource_names=self._names.get(type_url, []),
            )
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._channel is not None:
            await self._channel.close(None)
