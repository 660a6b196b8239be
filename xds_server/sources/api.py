"""Kubernetes objects from the API server: the same `Loaded` sets the directory source gives.

One thread per kind lists, then watches from the list's resourceVersion with bookmarks, so a
reconnect resumes where it stopped instead of listing again. A `410 Gone` (the version was
compacted away) lists again; any other failure reconnects after an exponential backoff with
full jitter (sources/backoff.py). A list replaces everything known of its kind, so a relist
that finds nothing new produces the same objects, the same snapshot hash, and nothing is
pushed. A watch that ends too soon, a `410 Gone` on every watch and a `429` back off too
(honouring `Retry-After`); an item that is not an object is refused alone. Nothing is yielded
until every kind has been listed once: a first snapshot built from half the kinds would
withdraw routes from every proxy.

The `kubernetes` client is synchronous (urllib3), hence threads; events cross to the event loop
through `call_soon_threadsafe`. Objects stay raw JSON dicts, as in a manifest file.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xds_server.sources.backoff import Backoff, retry_after
from xds_server.sources.objects import KubeObject, Limits, Loaded, parse_item
from xds_server.sources.watch import BURST_GAP

WATCH_SECONDS = 300
"""Server-side timeout of one watch request; it then resumes from the last version seen."""
FAILURES_REPORTED = 3
"""Attempts in a row that failed or ended too soon before readiness reports the API as a
problem (one is routine: a watch cut by a load balancer, an API server restarting)."""

log = logging.getLogger("xds_server.kubernetes")


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    api: str
    method: str
    field_selector: str = ""
    args: tuple[str, ...] = ()
    optional: bool = False
    """Only the Gateway API needs it: a 404 (its CRD is not installed) or a 403 (RBAC from
    before it) counts as none of it, logged, and is checked again later."""


def _gateway_kind(version: str, kind: str, plural: str) -> Kind:
    group = "gateway.networking.k8s.io"
    return Kind(
        f"{group}/{version}",
        kind,
        "CustomObjectsApi",
        "list_cluster_custom_object",
        args=(group, version, plural),
        optional=True,
    )


KINDS = (
    Kind("networking.k8s.io/v1", "Ingress", "NetworkingV1Api", "list_ingress_for_all_namespaces"),
    Kind("networking.k8s.io/v1", "IngressClass", "NetworkingV1Api", "list_ingress_class"),
    Kind("v1", "Service", "CoreV1Api", "list_service_for_all_namespaces"),
    Kind(
        "discovery.k8s.io/v1",
        "EndpointSlice",
        "DiscoveryV1Api",
        "list_endpoint_slice_for_all_namespaces",
    ),
    # Only TLS Secrets: the server never reads (or may read) any other Secret.
    Kind("v1", "Secret", "CoreV1Api", "list_secret_for_all_namespaces", "type=kubernetes.io/tls"),
    # The Gateway API (a cluster without its CRDs serves Ingress alone), and the Namespaces
    # its allowedRoutes selectors read.
    Kind("v1", "Namespace", "CoreV1Api", "list_namespace", optional=True),
    _gateway_kind("v1", "GatewayClass", "gatewayclasses"),
    _gateway_kind("v1", "Gateway", "gateways"),
    _gateway_kind("v1", "HTTPRoute", "httproutes"),
    _gateway_kind("v1beta1", "ReferenceGrant", "referencegrants"),
    # The GatewayClass CRD alone, for the installed version (its annotations; the schema
    # part is dropped on arrival).
    Kind(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "ApiextensionsV1Api",
        "list_custom_resource_definition",
        "metadata.name=gatewayclasses.gateway.networking.k8s.io",
        optional=True,
    ),
)
MISSING_CRD_RECHECK = 60.0
"""Seconds between looks for a Gateway API CRD that was not installed."""


class Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


class KubernetesSource:
    def __init__(self, kubeconfig: Path | None = None, limits: Limits | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.limits = limits or Limits()
        self._objects: dict[str, dict[tuple[str, str], KubeObject]] = {k.kind: {} for k in KINDS}
        self._rejected: dict[str, dict[tuple[str, str], list[str]]] = {k.kind: {} for k in KINDS}
        self._listed: set[str] = set()
        self._stop = threading.Event()
        self.failing: dict[str, str] = {}
        """Kinds whose watch keeps failing, with the last error (written by their threads)."""

    @property
    def problem(self) -> str | None:
        """Why the objects may be stale (the last good ones are served meanwhile), or None."""
        if not self.failing:
            return None
        kinds = ", ".join(f"{kind} ({error})" for kind, error in sorted(self.failing.items()))
        return f"Kubernetes API: watches failing: {kinds}; the last good objects stay"

    def client(self) -> Any:
        """An ApiClient from --kubeconfig, or the pod's service account."""
        from kubernetes import client, config

        if self.kubeconfig is not None:
            return config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        return client.ApiClient()

    async def watch(self) -> AsyncGenerator[Loaded, None]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, str, Any]] = asyncio.Queue()

        def emit(kind: str, kind_event: str, payload: Any) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, kind_event, payload))

        self._stop = threading.Event()  # a restarted source has threads of its own
        api_client = self.client()
        threads = [
            threading.Thread(
                target=KindWatcher(kind, api_client, emit, self._stop, self.failing).run,
                name=f"watch-{kind.kind}",
                daemon=True,
            )
            for kind in KINDS
        ]
        for thread in threads:
            thread.start()
        try:
            while True:
                self._apply(*await events.get())
                await asyncio.sleep(BURST_GAP)  # a burst (a list, a rollout) becomes one load
                while not events.empty():
                    self._apply(*events.get_nowait())
                if len(self._listed) == len(KINDS):
                    yield self.load()
        finally:
            self._stop.set()

    def _apply(self, kind: str, event: str, payload: Any) -> None:
        objects = self._objects[kind]
        if event == "LIST":
            objects.clear()
            self._rejected[kind].clear()
            for index, item in enumerate(payload):
                if isinstance(item, dict):
                    self._put(kind, item)
                else:  # refused alone: the rest of the list is served
                    self._rejected[kind][("", f"item {index}")] = [
                        f"api:{kind} list item {index}: expected an object, got {item!r:.60}"
                    ]
            self._listed.add(kind)
        elif event == "DELETED":
            key = _key(payload)
            objects.pop(key, None)
            self._rejected[kind].pop(key, None)
        else:  # ADDED, MODIFIED
            self._put(kind, payload)

    def _put(self, kind: str, item: dict[str, Any]) -> None:
        """Checked as a manifest would be: the API server's own checks are not all ours
        (Envoy's are stricter), and a version skew may let through what we cannot read."""
        spec = next(k for k in KINDS if k.kind == kind)
        if kind == "CustomResourceDefinition":
            item = {"metadata": item.get("metadata") or {}}  # its schema: large, unread
        item.setdefault("apiVersion", spec.api_version)  # list items carry neither
        item.setdefault("kind", kind)
        key = _key(item)
        loaded = parse_item(item, f"api:{kind}/{key[0]}/{key[1]}", self.limits)
        self._objects[kind].pop(key, None)
        self._rejected[kind].pop(key, None)
        if loaded.errors:
            self._rejected[kind][key] = loaded.errors
        for obj in loaded.objects:
            self._objects[kind][(obj.namespace, obj.name)] = obj

    def load(self) -> Loaded:
        """Every object now, and why each rejected one was (as long as it stays rejected)."""
        objects = [obj for by_name in self._objects.values() for obj in by_name.values()]
        errors = [e for by_name in self._rejected.values() for es in by_name.values() for e in es]
        return Loaded(objects=objects, errors=errors)


class KindWatcher:
    """List then watch one kind until stopped (runs in its own thread)."""

    def __init__(
        self,
        kind: Kind,
        api_client: Any,
        emit: Callable[[str, str, Any], None],
        stop: threading.Event,
        failing: dict[str, str],
    ) -> None:
        from kubernetes import client

        self.kind = kind
        method = getattr(getattr(client, kind.api)(api_client), kind.method)
        self.call = functools.partial(method, *kind.args)
        self.emit = emit
        self.stop = stop
        self.failing = failing
        self.version: str | None = None

    def run(self) -> None:
        backoff = Backoff()
        while not self.stop.is_set():
            began, error, asked_to_wait = time.monotonic(), None, None
            try:
                if self.version is None and not self.list():
                    self.stop.wait(MISSING_CRD_RECHECK)
                    continue
                self.watch_once()
                ended = "watch ended"
            except Gone:  # list again; at once unless it keeps happening
                log.info(
                    "%s: resourceVersion %s expired, listing again", self.kind.kind, self.version
                )
                self.version, ended = None, "410 Gone"
            except Exception as exc:  # the API server is down, a proxy cut us off, ...
                error, asked_to_wait = _short(exc), retry_after(exc)
                ended = f"watch failed ({error})"
            lasted = time.monotonic() - began
            delay = backoff.after(lasted, error is not None, asked_to_wait)
            self._report(backoff, f"{ended} after {lasted:.1f}s")
            if delay:
                level = logging.WARNING if error else logging.INFO
                log.log(level, "%s: %s after %.1fs; asking again in %.1fs",
                        self.kind.kind, ended, lasted, delay)  # fmt: skip
                self.stop.wait(delay)

    def _report(self, backoff: Backoff, why: str) -> None:
        """Readiness names a kind whose requests keep ending too soon (one is routine)."""
        if backoff.attempts >= FAILURES_REPORTED:
            self.failing[self.kind.kind] = f"{why}, {backoff.attempts} times in a row"
        elif backoff.attempts == 0:
            self.failing.pop(self.kind.kind, None)

    def _options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"_preload_content": False}
        if self.kind.field_selector:
            options["field_selector"] = self.kind.field_selector
        return options

    def list(self) -> bool:
        """List the kind (False: an optional kind's CRD is not installed: none of it)."""
        from kubernetes.client.exceptions import ApiException

        try:
            response = self.call(**self._options(), _request_timeout=30)
        except ApiException as exc:
            if exc.status not in (403, 404) or not self.kind.optional:
                raise
            why = "not installed" if exc.status == 404 else "forbidden by RBAC"
            log.warning("%s: %s; none of it is served", self.kind.kind, why)
            self.emit(self.kind.kind, "LIST", [])
            return False
        body = json.loads(response.data)
        items = body.get("items") or []
        if not isinstance(items, list):
            raise ValueError(f"a list whose items are not a list: {items!r:.60}")
        self.version = body["metadata"]["resourceVersion"]
        self.emit(self.kind.kind, "LIST", items)
        return True

    def watch_once(self) -> None:
        from kubernetes.client.exceptions import ApiException
        from kubernetes.watch.watch import iter_resp_lines

        try:
            response = self._watch_call()
        except ApiException as exc:
            if exc.status == 410:
                raise Gone from exc
            raise
        try:
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if self.stop.is_set():
                    return
                self.handle(json.loads(line))
        finally:
            response.release_conn()

    def _watch_call(self) -> Any:
        return self.call(
            **self._options(),
            watch=True,
            resource_version=self.version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _request_timeout=(10, WATCH_SECONDS + 30),
        )

    def handle(self, event: Any) -> None:
        if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
            log.warning("%s: skipped a watch event that is not an object: %.80r",
                        self.kind.kind, event)  # fmt: skip
            return
        kind, obj = event.get("type"), event["object"]
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone
            raise RuntimeError(f"watch error: {obj.get('message', obj)}")
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self.version = version
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self.emit(self.kind.kind, kind, obj)


def _short(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    text = f"HTTP {status}" if status else type(exc).__name__
    return f"{text}: {str(exc).splitlines()[0][:200]}" if str(exc) else text


def _key(item: dict[str, Any]) -> tuple[str, str]:
    metadata = item.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    return (str(metadata.get("namespace") or "default"), str(metadata.get("name") or "?"))
