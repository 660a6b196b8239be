"""Envoy admin API client: one reused connection pool, a timeout on every call.

The admin API is reached over a unix socket (the safe default: it serves /quitquitquit) or
loopback TCP. Errors form a small hierarchy that says what went wrong for the operator:
Envoy is gone, Envoy did not answer in time, or Envoy answered something we cannot use.
Only connection failures are retried: a timeout or a bad answer is reported at once so the
drain loop can fall back to process-level evidence instead of stacking up waits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from shutdown_manager.address import AdminAddress

DEFAULT_TIMEOUT = 1.0
"""Seconds per admin call: Envoy answers in milliseconds; longer means it is hung."""

CONNECT_ATTEMPTS = 3
"""Connection errors are retried this often (with backoff) to ride out a hot restart."""


class AdminError(Exception):
    """Base of everything the admin client raises."""


class EnvoyUnreachable(AdminError):
    """Nothing accepts connections at the admin address: Envoy is not running there."""


class AdminTimeout(AdminError):
    """Envoy accepted the call but did not answer in time: hung or overloaded."""


class AdminProtocolError(AdminError):
    """Envoy answered, but with a status or body we cannot use."""


@dataclass(frozen=True)
class ServerInfo:
    """The parts of /server_info the drain needs."""

    state: str
    drain_time_s: float | None
    drain_strategy: str | None
    restart_epoch: int | None
    base_id: int | None
    uptime: float | None = None
    """Seconds since the first epoch started (`uptime_all_epochs`)."""

    @property
    def draining(self) -> bool:
        return self.state == "DRAINING"


@dataclass(frozen=True)
class ListenerAddress:
    name: str
    host: str | None
    port: int | None


class AdminClient:
    """Envoy admin API over one pooled httpx client. Use as an async context manager."""

    def __init__(self, address: AdminAddress, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.address = address
        self.requests = 0
        # A fresh connection per call: after a hot restart the old epoch keeps answering on
        # connections it already has, so a pooled one would talk to the wrong Envoy. (Limits
        # belong on the transport: httpx ignores a client's limits when given a transport.)
        transport = httpx.AsyncHTTPTransport(
            uds=address.uds, limits=httpx.Limits(max_keepalive_connections=0)
        )
        self._http = httpx.AsyncClient(
            base_url=address.base_url,
            transport=transport,
            timeout=httpx.Timeout(timeout),
            trust_env=False,
        )

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str) -> httpx.Response:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(EnvoyUnreachable),
            stop=stop_after_attempt(CONNECT_ATTEMPTS),
            wait=wait_exponential(multiplier=0.02, max=0.2),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._once(method, path)
        raise AssertionError("unreachable")  # pragma: no cover - tenacity reraises

    async def _once(self, method: str, path: str) -> httpx.Response:
        self.requests += 1
        try:
            response = await self._http.request(method, path)
        except (httpx.ConnectError, FileNotFoundError, ConnectionRefusedError) as exc:
            raise EnvoyUnreachable(f"no Envoy admin at {self.address}: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise AdminTimeout(f"Envoy admin at {self.address} did not answer {path}") from exc
        except httpx.HTTPError as exc:
            raise AdminProtocolError(f"Envoy admin {path} failed: {exc!r}") from exc
        if response.status_code != 200:
            raise AdminProtocolError(
                f"Envoy admin {path} answered {response.status_code}: {response.text[:200]!r}"
            )
        return response

    async def _json(self, path: str) -> Any:
        response = await self._call("GET", path)
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AdminProtocolError(f"Envoy admin {path} returned no JSON") from exc

    async def server_info(self) -> ServerInfo:
        body = await self._json("/server_info")
        if not isinstance(body, dict) or not isinstance(body.get("state"), str):
            raise AdminProtocolError("/server_info has no state")
        options = body.get("command_line_options") or {}
        return ServerInfo(
            state=body["state"],
            drain_time_s=_seconds(options.get("drain_time")),
            drain_strategy=options.get("drain_strategy"),
            restart_epoch=_int_or_none(options.get("restart_epoch")),
            base_id=_int_or_none(options.get("base_id")),
            uptime=_seconds(body.get("uptime_all_epochs")),
        )

    async def stats(self, filter_regex: str) -> Any:
        """Raw JSON of `/stats?format=json&filter=...` (parsed by `stats.parse_stats`)."""
        return await self._json(
            "/stats?" + httpx.QueryParams({"format": "json", "filter": filter_regex}).__str__()
        )

    async def listeners(self) -> list[ListenerAddress]:
        body = await self._json("/listeners?format=json")
        found: list[ListenerAddress] = []
        for entry in body.get("listener_statuses", []) if isinstance(body, dict) else []:
            socket = (entry.get("local_address") or {}).get("socket_address") or {}
            port = socket.get("port_value")
            found.append(
                ListenerAddress(
                    name=str(entry.get("name", "")),
                    host=socket.get("address"),
                    port=int(port) if isinstance(port, int) else None,
                )
            )
        return found

    async def healthcheck_fail(self) -> None:
        await self._call("POST", "/healthcheck/fail")

    async def healthcheck_ok(self) -> None:
        await self._call("POST", "/healthcheck/ok")

    async def drain_listeners(self) -> None:
        """Graceful listener drain that leaves Envoy running (irreversible until restart)."""
        await self._call("POST", "/drain_listeners?graceful&skip_exit")


def _seconds(value: object) -> float | None:
    if isinstance(value, str) and value.endswith("s"):
        try:
            return float(value[:-1])
        except ValueError:
            return None
    return None


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None
