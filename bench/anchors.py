"""The anchors' drain *policies*, modelled on the same admin client (not their code).

* Contour `envoy shutdown-manager`: fail the health check, then every 5 s sum the HTTP
  connection managers' `downstream_cx_active` (TCP proxy connections are invisible) and
  release at <= 0; no deadline of its own.
* Envoy Gateway shutdown manager: fail the health check, then every 1 s sum the listeners'
  `downstream_cx_active`; release once the minimum drain has passed and the count is zero,
  or at its deadline.
"""

from __future__ import annotations

import asyncio
import time

from shutdown_manager.admin import AdminClient
from shutdown_manager.stats import ListenerFilter, count_connections, parse_stats

CONTOUR_INTERVAL = 5.0
ENVOY_GATEWAY_INTERVAL = 1.0


SKIPPED_MANAGERS = ("http.admin.", "http.probe.")
"""Contour leaves out its admin and stats/health listeners; `probe` is ours."""


async def _http_connections(admin: AdminClient) -> int:
    values = parse_stats(await admin.stats(r"^http\..*\.downstream_cx_active$"))
    return sum(v for k, v in values.items() if not k.startswith(SKIPPED_MANAGERS))


async def _listener_connections(admin: AdminClient, ignore: ListenerFilter) -> int:
    values = parse_stats(await admin.stats(r"^listener\..*\.downstream_cx_active$"))
    return count_connections(values, ignore).total


async def contour(admin: AdminClient, interval: float = CONTOUR_INTERVAL) -> float:
    """Returns the monotonic release time."""
    await admin.healthcheck_fail()
    while await _http_connections(admin) > 0:  # noqa: ASYNC110 - polling is the policy
        await asyncio.sleep(interval)
    return time.monotonic()


async def envoy_gateway(
    admin: AdminClient,
    min_drain: float,
    timeout: float,
    ignore: ListenerFilter,
    interval: float = ENVOY_GATEWAY_INTERVAL,
) -> float:
    start = time.monotonic()
    await admin.healthcheck_fail()
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= timeout:
            return time.monotonic()
        if elapsed >= min_drain and await _listener_connections(admin, ignore) == 0:
            return time.monotonic()
        await asyncio.sleep(interval)
