"""The conformance echo backend: answers any method on any path with what it received (as
JSON: service, pod, namespace, method, path, host, proto, headers), so a test can tell which backend
served a request and what the proxy sent it."""

from __future__ import annotations

from aiohttp import web

SERVICE = web.AppKey("service", str)
POD = web.AppKey("pod", str)
NAMESPACE = web.AppKey("namespace", str)


async def _echo(request: web.Request) -> web.Response:
    return web.json_response(
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

    async def start(self) -> Echo:
        app = web.Application()
        app[SERVICE], app[POD], app[NAMESPACE] = self.service, self.pod, self.namespace
        app.router.add_route("*", "/{tail:.*}", _echo)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
