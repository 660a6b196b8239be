"""FAKE Kubernetes API server, for the API source's tests: no real one can run here.

It speaks the real wire format of list and watch for the resources `xds-server
--kubernetes` reads (the Gateway API's as custom resources, answering 404 for those whose
CRDs are `missing`), get/create/replace (with resourceVersion conflicts) of Secrets, Leases,
Pods and Events, and merge patches of the status of Ingresses and Gateway API objects. As
the API server does, `metadata.generation` starts at 1 and grows when `spec` changes, and a
status write leaves it alone. Pods are what the shutdown-manager's
--confirm-deletion reads: a graceful deletion sets metadata.deletionTimestamp first, as the
API server does before any kubelet acts on it. Lists carry a resourceVersion; watches are a
chunked stream of JSON event lines from a given version, with BOOKMARK events, a `410 Gone`
ERROR event for a version older than the last compaction, `timeoutSeconds`, and connections
it can drop on demand. Every request is recorded so tests can check how the client resumed.
It misbehaves on demand as real API servers and proxies do: watches that end at once, 410 Gone
on every watch, 429 with Retry-After, list items that are not objects.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
import secrets
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

PATHS = {
    "/apis/networking.k8s.io/v1/ingresses": "Ingress",
    "/apis/networking.k8s.io/v1/ingressclasses": "IngressClass",
    "/api/v1/services": "Service",
    "/apis/discovery.k8s.io/v1/endpointslices": "EndpointSlice",
    "/api/v1/secrets": "Secret",
    "/api/v1/namespaces": "Namespace",
    "/apis/gateway.networking.k8s.io/v1/gatewayclasses": "GatewayClass",
    "/apis/gateway.networking.k8s.io/v1/gateways": "Gateway",
    "/apis/gateway.networking.k8s.io/v1/httproutes": "HTTPRoute",
    "/apis/gateway.networking.k8s.io/v1beta1/referencegrants": "ReferenceGrant",
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions": "CustomResourceDefinition",
}
GATEWAY_PLURALS = {"gatewayclasses": "GatewayClass", "gateways": "Gateway",
                   "httproutes": "HTTPRoute"}  # fmt: skip

NAMED = {"secrets": "Secret", "leases": "Lease", "pods": "Pod", "events": "Event"}
"""Namespaced objects read and written one by one (GET, POST, PUT)."""


@dataclass
class Request:
    kind: str
    watch: bool
    resource_version: str | None
    field_selector: str | None


@dataclass
class FakeKubeApi:
    version: int = 1
    objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = field(
        default_factory=lambda: {kind: {} for kind in [*PATHS.values(), *NAMED.values()]}
    )
    status_patches: list[tuple[str, str]] = field(default_factory=list)
    gateway_status_patches: list[tuple[str, str, str]] = field(default_factory=list)
    """(kind, namespace, name) of every Gateway API status write."""
    missing: set[str] = field(default_factory=set)
    """Kinds whose CRD is not installed: listing them answers 404."""
    history: list[tuple[int, str, str, dict[str, Any]]] = field(default_factory=list)
    compacted: int = 0
    requests: list[Request] = field(default_factory=list)
    # Misbehaviour on demand, as a real API server (or a proxy in front of it) can:
    watches_end_at_once: bool = False
    """Every watch answers 200 and ends before its first event."""
    always_gone: bool = False
    """Every watch answers 410 Gone, whatever the version."""
    throttled: float | None = None
    """Lists and watches answer 429 with this Retry-After (seconds)."""
    junk_items: dict[str, list[Any]] = field(default_factory=dict)
    """Kind -> list items that are not objects, sent after the real ones."""
    _watchers: list[tuple[str, asyncio.Queue[dict[str, Any] | None]]] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    port: int = 0
    host: str = "127.0.0.1"
    scheme: str = "http"
    ca: bytes = b""
    """The CA of its serving certificate (PEM), when it serves TLS."""

    async def start(
        self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None
    ) -> FakeKubeApi:
        """Listen on `host` (a port of its own), over TLS with `tls`: what pods reach with
        in-cluster credentials (bench/lab/docker_pod.py)."""
        self.host, self.scheme = host, "https" if tls else "http"
        app = web.Application()
        for path in PATHS:
            app.router.add_get(path, self._handle)
        for prefix in ("/api/v1", "/apis/coordination.k8s.io/v1"):
            named = prefix + "/namespaces/{ns}/{resource}"
            app.router.add_get(named + "/{name}", self._get)
            app.router.add_put(named + "/{name}", self._put)
            app.router.add_post(named, self._post)
        app.router.add_patch(
            "/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses/{name}/status",
            self._patch_status,
        )
        gateway_api = "/apis/gateway.networking.k8s.io/v1"
        app.router.add_patch(
            gateway_api + "/namespaces/{ns}/{resource}/{name}/status", self._patch_gateway_status
        )
        app.router.add_patch(gateway_api + "/{resource}/{name}/status", self._patch_gateway_status)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, 0, ssl_context=tls)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()

    def kubeconfig(self, directory: Path) -> Path:
        path = directory / "kubeconfig"
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "u", "user": {"token": "fake-token"}}],
                    "contexts": [{"name": "c", "context": {"cluster": "fake", "user": "u"}}],
                    "current-context": "c",
                }
            )
        )
        return path

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    # --- changing the cluster ---------------------------------------------------------

    def apply(self, obj: dict[str, Any]) -> None:
        obj = copy.deepcopy(obj)
        kind, metadata = obj["kind"], obj["metadata"]
        key = (metadata.get("namespace", "default"), metadata["name"])
        event = "MODIFIED" if key in self.objects[kind] else "ADDED"
        self._record(kind, event, key, obj)

    def delete(self, kind: str, name: str, namespace: str = "default") -> None:
        obj = self.objects[kind][(namespace, name)]
        self._record(kind, "DELETED", (namespace, name), copy.deepcopy(obj))

    def _record(self, kind: str, event: str, key: tuple[str, str], obj: dict[str, Any]) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        current = self.objects[kind].get(key)
        if current is None:
            obj["metadata"].setdefault("generation", 1)
        elif event != "DELETED":
            generation = current["metadata"].get("generation", 1)
            changed = obj.get("spec") != current.get("spec")
            obj["metadata"]["generation"] = generation + 1 if changed else generation
        if event == "DELETED":
            del self.objects[kind][key]
        else:
            self.objects[kind][key] = obj
        self.history.append((self.version, kind, event, obj))
        for watched, queue in self._watchers:
            if watched == kind:
                queue.put_nowait({"type": event, "object": obj})

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects["Secret"].get((namespace, name))

    def add_pod(self, name: str, namespace: str, uid: str) -> None:
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "uid": uid},
                "status": {"phase": "Running"},
            }
        )

    def start_deleting(self, name: str, namespace: str, grace_period: float) -> None:
        """A graceful delete: the API server stamps the pod, the kubelet then terminates it."""
        pod = copy.deepcopy(self.objects["Pod"][(namespace, name)])
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        stamp = now + datetime.timedelta(seconds=grace_period)
        pod["metadata"]["deletionTimestamp"] = stamp.isoformat().replace("+00:00", "Z")
        pod["metadata"]["deletionGracePeriodSeconds"] = int(grace_period)
        self.apply(pod)

    def gets(self, kind: str) -> int:
        return sum(
            1
            for r in self.requests
            if r.kind == kind and (r.field_selector or "").startswith("name=")
        )

    def compact(self) -> None:
        """Forget history: a watch from any version seen so far gets 410 Gone."""
        self.version += 1
        self.compacted = self.version

    def bookmark(self) -> None:
        self.version += 1
        for kind, queue in self._watchers:
            mark = {"kind": kind, "metadata": {"resourceVersion": str(self.version)}}
            queue.put_nowait({"type": "BOOKMARK", "object": mark})

    def drop_watches(self, abrupt: bool = False) -> None:
        """End every watch: cleanly (as at timeoutSeconds) or by cutting the connection."""
        for _, queue in self._watchers:
            queue.put_nowait({"type": "CUT"} if abrupt else None)

    def lists(self, kind: str) -> int:
        return sum(1 for r in self.requests if r.kind == kind and not r.watch)

    # --- the API ----------------------------------------------------------------------

    def _status(self, code: int, reason: str, message: str) -> web.Response:
        body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                "message": message, "code": code}  # fmt: skip
        return web.json_response(body, status=code)

    def _named(self, request: web.Request) -> tuple[str, tuple[str, str]]:
        kind = NAMED[request.match_info["resource"]]
        return kind, (request.match_info["ns"], request.match_info.get("name", ""))

    async def _get(self, request: web.Request) -> web.Response:
        kind, key = self._named(request)
        self.requests.append(Request(kind, False, None, f"name={key[1]}"))
        found = self.objects[kind].get(key)
        if found is None:
            return self._status(404, "NotFound", f'{kind} "{key[1]}" not found')
        return web.json_response(found)

    async def _post(self, request: web.Request) -> web.Response:
        kind, (namespace, _) = self._named(request)
        body = await request.json()
        metadata = body["metadata"]
        if "name" not in metadata and "generateName" in metadata:  # as the API server does
            metadata["name"] = metadata["generateName"] + secrets.token_hex(3)[:5]
        key = (namespace, metadata["name"])
        if key in self.objects[kind]:
            return self._status(409, "AlreadyExists", f'{kind} "{key[1]}" already exists')
        body["metadata"]["namespace"] = namespace
        body.setdefault("kind", kind)
        self.apply(body)
        return web.json_response(self.objects[kind][key], status=201)

    async def _put(self, request: web.Request) -> web.Response:
        kind, key = self._named(request)
        body = await request.json()
        current = self.objects[kind].get(key)
        if current is None:
            return self._status(404, "NotFound", f'{kind} "{key[1]}" not found')
        wanted = body["metadata"].get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            return self._status(409, "Conflict", "the object has been modified")
        body["metadata"]["namespace"] = key[0]
        body.setdefault("kind", kind)
        self.apply(body)
        return web.json_response(self.objects[kind][key])

    async def _patch_status(self, request: web.Request) -> web.Response:
        """An Ingress status patch (merge): recorded, and seen by watchers as MODIFIED."""
        key = (request.match_info["ns"], request.match_info["name"])
        self.status_patches.append(key)
        current = self.objects["Ingress"].get(key)
        if current is None:
            return self._status(404, "NotFound", f'Ingress "{key[1]}" not found')
        patch = await request.json()
        self.apply({**current, "status": patch["status"]})
        return web.json_response(self.objects["Ingress"][key])

    async def _patch_gateway_status(self, request: web.Request) -> web.Response:
        """A Gateway API status merge patch: `status` replaced by the patch's (what a merge
        patch does to the lists it is made of)."""
        kind = GATEWAY_PLURALS[request.match_info["resource"]]
        key = (request.match_info.get("ns", "default"), request.match_info["name"])
        self.gateway_status_patches.append((kind, *key))
        current = self.objects[kind].get(key)
        if current is None:
            return self._status(404, "NotFound", f'{kind} "{key[1]}" not found')
        if "merge-patch" not in request.content_type:
            return self._status(415, "UnsupportedMediaType", request.content_type)
        patch = await request.json()
        self.apply({**current, "status": patch["status"]})
        return web.json_response(self.objects[kind][key])

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind = PATHS[request.path]
        if kind in self.missing:
            return self._status(404, "NotFound", "the server could not find the requested resource")
        selector = request.query.get("fieldSelector")
        watching = request.query.get("watch") in ("true", "1", "True")
        since = request.query.get("resourceVersion")
        self.requests.append(Request(kind, watching, since, selector))
        if self.throttled is not None:
            response = self._status(429, "TooManyRequests", "slow down")
            response.headers["Retry-After"] = f"{self.throttled:g}"
            return response
        if not watching:
            return self._list(kind, selector)
        return await self._watch(request, kind, int(since or 0), selector)

    def _visible(self, obj: dict[str, Any], selector: str | None) -> bool:
        """The two field selectors the server sends: a Secret type, an object's name."""
        if selector and selector.startswith("metadata.name="):
            return bool(obj["metadata"]["name"] == selector.partition("=")[2])
        return selector != "type=kubernetes.io/tls" or obj.get("type") == "kubernetes.io/tls"

    def _list(self, kind: str, selector: str | None) -> web.Response:
        items = []
        for obj in self.objects[kind].values():
            if self._visible(obj, selector):
                item = {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
                items.append(item)
        return web.json_response(
            {
                "kind": f"{kind}List",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self.version)},
                "items": items + self.junk_items.get(kind, []),
            }
        )

    async def _watch(
        self, request: web.Request, kind: str, since: int, selector: str | None
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        if self.watches_end_at_once:
            return response
        if since < self.compacted or self.always_gone:
            gone = {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "reason": "Expired",
                "message": f"too old resource version: {since} ({self.compacted})",
                "code": 410,
            }
            await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            return response
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        for version, watched, change, obj in self.history:
            if watched == kind and version > since:
                queue.put_nowait({"type": change, "object": obj})
        entry = (kind, queue)
        self._watchers.append(entry)
        timeout = float(request.query.get("timeoutSeconds", "300"))
        try:
            while True:
                event = await asyncio.wait_for(queue.get(), timeout)
                if event is None:
                    break  # ended by the test, as a timeout would
                if event["type"] == "CUT" and request.transport is not None:
                    request.transport.abort()  # no final chunk: the client sees a broken stream
                    break
                if event["type"] != "BOOKMARK" and not self._visible(event["object"], selector):
                    continue
                await response.write(json.dumps(event).encode() + b"\n")
        except (TimeoutError, ConnectionResetError):
            pass
        finally:
            self._watchers.remove(entry)
        return response
