"""Client scenarios around a pod's termination, shared by the local and the kind e2e suites.

Each scenario sends load to a `Target`, deletes the pod mid-load, and returns what every
client saw plus when the slowest client ended on its own. Deletion is "the kubelet starts
the preStop hooks"; new requests keep arriving for `ENDPOINTS_LAG` seconds after it (the
time endpoints, kube-proxy and load balancers take to notice), then stop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from bench.lab.clients import (
    Tally,
    TcpConnection,
    http_client,
    steady_load,
    streaming_request,
)
from bench.lab.h2client import h2_load

ENDPOINTS_LAG = 1.0
"""Seconds new requests still arrive after deletion; below the pods' minimum drain."""

WARM_UP = 0.5
"""Seconds of load before deletion."""


class Target(Protocol):
    """A pod to load and delete: the local pod runner, or a pod in a kind cluster."""

    def url(self, path: str = "/") -> str: ...

    @property
    def tcp_port(self) -> int: ...

    async def delete(self) -> object:
        """Delete the pod; return when it is gone, with whatever report the runner has."""
        ...


@dataclass
class Result:
    tally: Tally = field(default_factory=Tally)
    deleted_at: float = 0.0
    natural_end: float = 0.0
    """When the slowest client finished on its own (monotonic)."""
    report: object = None

    @property
    def failed(self) -> int:
        return self.tally.failed


async def _delete_during(target: Target, result: Result, clients: Awaitable[object]) -> Result:
    await asyncio.sleep(WARM_UP)
    result.deleted_at = time.monotonic()
    deletion = asyncio.create_task(target.delete())
    await clients
    result.natural_end = max(result.natural_end, time.monotonic())
    result.report = await deletion
    return result


async def steady_http1(target: Target) -> Result:
    """Four keep-alive clients, requests always in flight, until endpoints catch up."""
    result, stop = Result(), asyncio.Event()

    async def clients() -> None:
        load = [
            asyncio.create_task(
                steady_load(target.url("/slow?s=0.02"), stop, result.tally, pause=0)
            )
            for _ in range(4)
        ]
        await asyncio.sleep(WARM_UP + ENDPOINTS_LAG)
        stop.set()
        await asyncio.gather(*load)

    return await _delete_during(target, result, clients())


async def http2_multiplexed(target: Target) -> Result:
    """Two HTTP/2 connections, eight streams each, through deletion (GOAWAY honoured)."""
    result, stop = Result(), asyncio.Event()

    async def clients() -> None:
        load = asyncio.create_task(h2_load(target.url(), stop, result.tally))
        await asyncio.sleep(WARM_UP + ENDPOINTS_LAG)
        stop.set()
        await load

    return await _delete_during(target, result, clients())


async def long_streams(target: Target) -> Result:
    """Three streaming responses that end on their own ~3 s after deletion."""
    result = Result()

    async def clients() -> None:
        ends = await asyncio.gather(
            *(streaming_request(target.url("/stream?n=7&d=0.5"), result.tally) for _ in range(3))
        )
        result.natural_end = max(ends)

    return await _delete_during(target, result, clients())


async def idle_pool_sends_again(target: Target) -> Result:
    """A pooled connection idles through deletion, sends again mid-drain, then idles."""
    result = Result()

    async def clients() -> None:
        async with http_client() as client:
            for pause in (0.0, WARM_UP + ENDPOINTS_LAG):
                await asyncio.sleep(pause)
                try:
                    result.tally.record(await client.get(target.url()))
                except httpx.HTTPError as exc:
                    result.tally.fail(exc)
            result.natural_end = time.monotonic()

    return await _delete_during(target, result, clients())


async def new_connections_in_min_drain(target: Target) -> Result:
    """A new connection for every request while endpoints have not caught up yet."""
    result = Result()

    async def clients() -> None:
        until = time.monotonic() + WARM_UP + ENDPOINTS_LAG
        while time.monotonic() < until:
            async with httpx.AsyncClient(trust_env=False, timeout=10) as fresh:
                try:
                    result.tally.record(await fresh.get(target.url()))
                except httpx.HTTPError as exc:
                    result.tally.fail(exc)
            await asyncio.sleep(0.02)

    return await _delete_during(target, result, clients())


async def tcp_proxy_session(target: Target) -> Result:
    """A TCP-proxy tunnel in use until 2.5 s after deletion, then closed by the client."""
    result = Result()

    async def clients() -> None:
        tunnel = await TcpConnection(target.tcp_port).open()
        until = time.monotonic() + WARM_UP + 2.5
        try:
            while time.monotonic() < until:
                if await tunnel.request():
                    result.tally.ok += 1
                else:
                    result.tally.failed += 1
                await asyncio.sleep(0.2)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            result.tally.fail(exc)
        finally:
            await tunnel.close()
        result.natural_end = time.monotonic()

    return await _delete_during(target, result, clients())


Scenario = Callable[[Target], Awaitable[Result]]

DRAINING_SCENARIOS: dict[str, Scenario] = {
    "steady HTTP/1.1 keep-alive": steady_http1,
    "HTTP/2 multiplexed": http2_multiplexed,
    "long streaming responses": long_streams,
    "idle pool sends again mid-drain": idle_pool_sends_again,
    "new connections during the minimum drain": new_connections_in_min_drain,
    "TCP-proxy connection": tcp_proxy_session,
}
