"""The conformance echo backend: answers any method on any path with what it received (as
JSON: service, pod, namespace, method, path, host, proto, headers), so a test can tell which backend
served a request and what the proxy sent it. A request asks for a slow answer with
`X-Echo-Delay-Ms` (timeouts) and response headers with `X-Echo-Set-Header: name:value,...`
(as the harness's echo does); each pod keeps the paths it saw (mirroring)."""

from __future__ import annotations

import asyncio

from aiohttp import web

SERVICE = web.AppKey("service", str)
POD = web.AppKey("pod", str)
NAMESPACE = web.AppKey("namespace", str)
SEEN = web.AppKey("seen", list[str])
DELAY = "X-Echo-Delay-Ms"
SET_HEADER = "X-Echo-Set-Header"


async def _echo(request: web.Request) -> web.Response:
    request.app[SEEN].append(request.path_qs)
    delay = request.headers.get(DELAY, "")
    if delay.isdigit():
        await asyncio.sleep(int(delay) / 1000)
    answer = web.json_response(
        {
            "service": request.app[SERVICE],
            "pod": request.app[POD],
            "namespace": request.app[NAMESPACE],
            "method": request.method,
            "path": request.path_qs,
            "host": request.host,
            "proto": f"HTTP/{request.version.major}.{request.version.minor}",
            # A header sent twice is one field of both values, as HTTP reads it.
            "headers": {k: ",".join(request.headers.getall(k)) for k in request.headers},
        }
    )
    for item in request.headers.get(SET_HEADER, "").split(","):
        name, _, value = item.partition(":")
        if name.strip():
            answer.headers.add(name.strip(), value.strip())
    return answer


class Echo:
    """One pod of a Service: an aiohttp server on `host` (a loopback address), OS port."""

    def __init__(
        self,
        service: str,
        host: str = "127.0.0.1",
        port: int = 0,
        pod: str = "",
        namespace: str = "default",
    ) -> None:
        self.service, self.namespace = service, namespace
        self.host = host
        self.port = port
        self.pod = pod or f"{service}-{host}"
        self._runner: web.AppRunner | None = None
        self.seen: list[str] = []
        """Every path (with its query) this pod was asked for."""

    async def start(self) -> Echo:
        app = web.Application()
        app[SERVICE], app[POD], app[NAMESPACE] = self.service, self.pod, self.namespace
        app[SEEN] = self.seen
        app.router.add_route("*", "/{tail:.*}", _echo)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
