"""`GET /drained?ip=ADDRESS`: the exact preStop for the apps behind Envoy.

A pod being deleted gets SIGTERM while Envoys may still send it new requests (its
EndpointSlice update and the proxies catch up within about a second, nothing waits for
them). An app that stops at SIGTERM then loses what arrives meanwhile; the usual answer is a
blind preStop sleep. This answers once it is safe instead: when no cluster has the address
as a host taking new requests (DRAINING or gone) and every connected proxy has ACKed that
snapshot. An address that is the last one serving its Service (KEP-1669's fallback) is
still taking requests, so its pod is held until a successor is ready or the timeout.

The pod names its own address (`$(POD_IP)` from the Downward API in an exec hook, or a
sidecar); 200 when drained, 504 at the timeout (the kubelet goes on to SIGTERM either way).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Iterable

from aiohttp import web

from xds_server.model.types import Model

DEFAULT_TIMEOUT_S = 30.0
MAX_TIMEOUT_S = 300.0
POLL_S = 0.05
"""How often the wait looks again: a proxy's ACK lands within a poll."""


MAX_WAITERS = 512
"""Waits at once; more are refused (503): /drained is reachable from every pod."""


def taking_requests(model: Model | None, addresses: set[str]) -> set[str]:
    """Those of `addresses` some cluster still sends new requests to."""
    if model is None:
        return set(addresses)
    return addresses & _healthy(model)


_HEALTHY: dict[int, tuple[Model, frozenset[str]]] = {}


def _healthy(model: Model) -> frozenset[str]:
    """Every address taking new requests in `model`: computed once per served model, however
    many pods wait on it."""
    cached = _HEALTHY.get(id(model))
    if cached is not None and cached[0] is model:
        return cached[1]
    found = frozenset(
        e.address
        for backend in model.clusters.values()
        for e in backend.endpoints
        if not e.draining
    )
    _HEALTHY.clear()  # only the model served now is ever asked about again
    _HEALTHY[id(model)] = (model, found)
    return found


class Waiters:
    """How many requests wait now, bounded."""

    def __init__(self, limit: int = MAX_WAITERS) -> None:
        self.limit, self.now = limit, 0


def _addresses(request: web.Request) -> set[str]:
    found = set()
    for text in request.query.getall("ip", []):
        try:
            found.add(str(ipaddress.ip_address(text)))
        except ValueError:
            raise web.HTTPBadRequest(text=f"ip={text[:64]!r} is not an IP address\n") from None
    if not found:
        raise web.HTTPBadRequest(text="name the pod's address: /drained?ip=10.0.0.7\n")
    return found


def _timeout(request: web.Request) -> float:
    text = request.query.get("timeout", str(DEFAULT_TIMEOUT_S))
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_TIMEOUT_S:
        raise web.HTTPBadRequest(text=f"timeout={text[:16]!r}: seconds, 0 to {MAX_TIMEOUT_S:g}\n")
    return value


async def wait_drained(
    request: web.Request,
    model: Callable[[], Model | None],
    converged: Callable[[], Iterable[bool]],
    waiters: Waiters,
) -> web.Response:
    """The handler: `model` gives the model of the snapshot served now, `converged` each
    connected proxy's "has ACKed the snapshot served now"."""
    addresses, timeout = _addresses(request), _timeout(request)
    if waiters.now >= waiters.limit:
        raise web.HTTPServiceUnavailable(text=f"{waiters.limit} pods wait already\n")
    waiters.now += 1
    try:
        return await _wait(addresses, timeout, model, converged)
    finally:
        waiters.now -= 1


async def _wait(
    addresses: set[str],
    timeout: float,
    model: Callable[[], Model | None],
    converged: Callable[[], Iterable[bool]],
) -> web.Response:
    began = time.monotonic()
    while True:
        busy = taking_requests(model(), addresses)
        waiting = sum(1 for done in converged() if not done)
        if not busy and not waiting:
            return web.json_response({"drained": True, "waited_s": time.monotonic() - began})
        if time.monotonic() - began >= timeout:
            body = {"drained": False, "taking_requests": sorted(busy), "proxies_behind": waiting}
            return web.json_response(body, status=504)
        await asyncio.sleep(POLL_S)
