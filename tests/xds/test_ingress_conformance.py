"""Kubernetes Ingress to the letter, through a real Envoy fed by `xds-server`, over delta and
over SotW: every scenario of the five features of kubernetes-sigs/ingress-controller-conformance
(host rules with TLS by SNI, path rules, default backend, ingress class, load balancing) and
the path examples table of the Kubernetes Ingress documentation, each written anew here as a
table; then the rules Kubernetes leaves to the controller, as this project settles them
(docs/xds.md, "Ingress semantics")."""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.lab.echo import Echo
from bench.lab.envoy import free_port
from bench.lab.xds import (
    XdsEnvoy,
    XdsServer,
    endpoint_slice,
    https_get,
    ingress,
    service,
    tls_secret,
    write_manifests,
)
from xds_server.certs import pki

pytestmark = pytest.mark.timeout(120)
FLAVOURS = pytest.mark.parametrize("sotw", [False, True], ids=["delta", "sotw"])
DAY = datetime.timedelta(days=1)


def backend(service_name: str, port: int | str = 8080) -> dict[str, Any]:
    number_or_name = {"number": port} if isinstance(port, int) else {"name": port}
    return {"service": {"name": service_name, "port": number_or_name}}


def path(value: str, kind: str, service_name: str, port: int | str = 8080) -> dict[str, Any]:
    return {"path": value, "pathType": kind, "backend": backend(service_name, port)}


def host_rule(host: str | None, *paths: dict[str, Any]) -> dict[str, Any]:
    rule: dict[str, Any] = {"http": {"paths": list(paths)}}
    if host is not None:
        rule["host"] = host
    return rule


class Cluster:
    """Echo pods for named Services, the manifests that describe them, and the server and
    Envoy that route to them."""

    def __init__(self, workdir: Path, manifests: Path, sotw: bool) -> None:
        self.workdir, self.manifests, self.sotw = workdir, manifests, sotw
        self.echos: list[Echo] = []
        self.objects: list[dict[str, Any]] = []
        self.server: XdsServer | None = None
        self.envoy: XdsEnvoy | None = None

    async def services(self, *names: str) -> Cluster:
        for name in names:
            await self.pods(name, ["127.0.0.1"])
        return self

    async def pods(self, name: str, ready: list[str], not_ready: Iterable[str] = ()) -> None:
        """A Service `name` (port 8080, named http) with an echo pod on each address, all on
        one port as pods of a Service are; `not_ready` pods run too but must get nothing."""
        port = free_port(ready[0])
        for address in [*ready, *not_ready]:
            self.echos.append(await Echo(name, address, port).start())
        self.objects.append(service(name, [("http", 8080)]))
        body = endpoint_slice(name, "http", port, ready)
        body["endpoints"] += [{"addresses": [a], "conditions": {"ready": False}} for a in not_ready]
        self.objects.append(body)

    async def start(self, *objects: dict[str, Any], flags: tuple[str, ...] = ()) -> Cluster:
        write_manifests(self.manifests, "app", [*self.objects, *objects])
        self.server = XdsServer(self.workdir, self.manifests, *flags)  # stopped even if
        await self.server.start()  # its start fails
        self.envoy = XdsEnvoy(self.workdir, self.server, "conformance", sotw=self.sotw)
        await self.envoy.start()
        return self

    async def stop(self) -> None:
        for process in (self.envoy, self.server):
            if process is not None:
                process.stop()
        for echo in self.echos:
            await echo.stop()

    async def send(
        self, method: str, host: str, target: str, port: int | None = None
    ) -> tuple[int, dict[str, Any] | None, httpx.Response]:
        assert self.server is not None
        url = f"http://127.0.0.1:{port or self.server.envoy_http_port}{target}"
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            response = await client.request(method, url, headers={"Host": host})
        echoed = response.json() if response.status_code == 200 else None
        return response.status_code, echoed, response

    async def settled(self, host: str, target: str, service_name: str) -> None:
        """Wait until the config is in (the first request after Envoy's start may race it)."""
        for _ in range(200):
            status, echoed, _ = await self.send("GET", host, target)
            if status == 200 and echoed is not None and echoed["service"] == service_name:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{host}{target} never reached {service_name}")


@pytest.fixture
async def cluster(
    request: pytest.FixtureRequest, workdir: Path, manifests: Path
) -> AsyncIterator[Cluster]:
    made = Cluster(workdir, manifests, request.node.callspec.params["sotw"])
    yield made
    await made.stop()


HOST_RULES = ingress(
    "host-rules",
    [
        host_rule("*.foo.com", path("/", "Prefix", "wildcard-foo-com", 8080)),
        host_rule("foo.bar.com", path("/", "Prefix", "foo-bar-com", "http")),
    ],
    tls=[{"hosts": ["foo.bar.com"], "secretName": "conformance-tls"}],
)

HOST_SCENARIOS = [
    # (Host header, expected service or None for 404, the request host the backend sees)
    ("foo.bar.com", "foo-bar-com", "foo.bar.com"),
    ("subdomain.bar.com", None, None),
    ("bar.foo.com", "wildcard-foo-com", "bar.foo.com"),
    ("baz.bar.foo.com", None, None),  # a wildcard covers exactly one DNS label
    ("foo.com", None, None),  # ... and never zero
    # Not in the features, in the spec's words: the port and the case of Host are ignored
    # for matching, and the backend sees the header as sent.
    ("bar.foo.com:8080", "wildcard-foo-com", "bar.foo.com:8080"),
    ("foo.bar.com:8080", "foo-bar-com", "foo.bar.com:8080"),
    ("BAR.Foo.COM", "wildcard-foo-com", None),
    ("FOO.BAR.COM", "foo-bar-com", None),
]


@FLAVOURS
async def test_host_rules(sotw: bool, cluster: Cluster) -> None:
    ca = pki.issue_ca("conformance-ca", DAY, "ecdsa-p256")
    leaf = pki.issue_leaf(ca, "foo.bar.com", ["foo.bar.com"], "server", DAY, "ecdsa-p256")
    await cluster.services("wildcard-foo-com", "foo-bar-com")
    await cluster.start(tls_secret("conformance-tls", leaf.certificate, leaf.key), HOST_RULES)
    await cluster.settled("foo.bar.com", "/", "foo-bar-com")
    for host, served_by, seen_host in HOST_SCENARIOS:
        status, echoed, _ = await cluster.send("GET", host, "/")
        assert status == (200 if served_by else 404), host
        if echoed is not None:
            assert echoed["service"] == served_by, host
            if seen_host:
                assert echoed["host"] == seen_host, host
    assert cluster.server is not None
    body, names = await https_get(cluster.server.envoy_https_port, "foo.bar.com", ca.certificate)
    assert names == ["foo.bar.com"], "the secure connection verifies foo.bar.com"
    assert json.loads(body)["service"] == "foo-bar-com"
    assert json.loads(body)["host"] == "foo.bar.com"


PATH_RULES = ingress(
    "path-rules",
    [
        host_rule("exact-path-rules", path("/foo", "Exact", "foo-exact")),
        host_rule(
            "prefix-path-rules",
            path("/foo", "Prefix", "foo-prefix"),
            path("/aaa/bbb", "Prefix", "aaa-slash-bbb-prefix"),
            path("/aaa", "Prefix", "aaa-prefix"),
        ),
        host_rule(
            "mixed-path-rules",
            path("/foo", "Prefix", "foo-prefix"),
            path("/foo", "Exact", "foo-exact"),
        ),
        host_rule(
            "trailing-slash-path-rules",
            path("/aaa/bbb/", "Prefix", "aaa-slash-bbb-slash-prefix"),
            path("/foo/", "Exact", "foo-slash-exact"),
        ),
    ],
)

PATH_SCENARIOS = [
    # (host, request path, expected service or None for 404)
    ("exact-path-rules", "/foo", "foo-exact"),
    ("exact-path-rules", "/foo/", None),
    ("exact-path-rules", "/FOO", None),
    ("exact-path-rules", "/bar", None),
    ("prefix-path-rules", "/foo", "foo-prefix"),
    ("prefix-path-rules", "/foo/", "foo-prefix"),
    ("prefix-path-rules", "/FOO", None),
    ("prefix-path-rules", "/aaa/bbb", "aaa-slash-bbb-prefix"),
    ("prefix-path-rules", "/aaa/bbb/ccc", "aaa-slash-bbb-prefix"),
    ("prefix-path-rules", "/aaa/ccc", "aaa-prefix"),
    ("prefix-path-rules", "/aaaccc", None),
    ("mixed-path-rules", "/foo", "foo-exact"),
    ("trailing-slash-path-rules", "/aaa/bbb", "aaa-slash-bbb-slash-prefix"),
    ("trailing-slash-path-rules", "/aaa/bbb/", "aaa-slash-bbb-slash-prefix"),
    ("trailing-slash-path-rules", "/foo", None),
]


@FLAVOURS
async def test_path_rules(sotw: bool, cluster: Cluster) -> None:
    await cluster.services(
        "foo-exact", "foo-prefix", "aaa-slash-bbb-prefix", "aaa-prefix",
        "aaa-slash-bbb-slash-prefix", "foo-slash-exact",
    )  # fmt: skip
    await cluster.start(PATH_RULES)
    await cluster.settled("exact-path-rules", "/foo", "foo-exact")
    for host, target, served_by in PATH_SCENARIOS:
        status, echoed, _ = await cluster.send("GET", host, target)
        assert status == (200 if served_by else 404), (host, target)
        if echoed is not None:
            assert echoed["service"] == served_by, (host, target)
            assert echoed["path"] == target, "the request path reaches the backend unchanged"


DEFAULT_BACKEND_SCENARIOS = [
    ("GET", "my-host", ""),
    ("GET", "my-host", "sub-path"),
    ("POST", "some-host", ""),
    ("PUT", "", "resource"),
    ("DELETE", "some-host", "resource"),
    ("PATCH", "my-host", "resource"),
]


@FLAVOURS
async def test_default_backend(sotw: bool, cluster: Cluster) -> None:
    await cluster.services("echo-service")
    only_default = ingress("default-backend", [], defaultBackend=backend("echo-service"))
    only_default["spec"].pop("rules")
    await cluster.start(only_default)
    await cluster.settled("my-host", "/", "echo-service")
    assert cluster.server is not None
    for method, host, sub_path in DEFAULT_BACKEND_SCENARIOS:
        status, echoed, response = await cluster.send(
            method, host or f"127.0.0.1:{cluster.server.envoy_http_port}", f"/{sub_path}"
        )
        assert status == 200, (method, host, sub_path)
        assert echoed is not None
        assert echoed["service"] == "echo-service"
        assert response.http_version == "HTTP/1.1"
        for header in ("Content-Length", "Content-Type", "Date", "Server"):
            assert header in response.headers, header
        assert echoed["method"] == method
        assert echoed["path"] == f"/{sub_path}"
        assert echoed["proto"] == "HTTP/1.1"
        assert echoed["headers"]["User-Agent"].startswith("python-httpx/")


@FLAVOURS
async def test_an_ingress_of_another_class_is_not_served(sotw: bool, cluster: Cluster) -> None:
    await cluster.services("ingress-class-prefix", "ours")
    ours = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {"name": "envoy-lifecycle"},
        "spec": {"controller": "envoy-lifecycle.io/ingress-controller"},
    }
    theirs = ingress(
        "test-ingress-class",
        [host_rule("ingress-class", path("/", "Prefix", "ingress-class-prefix"))],
        ingressClassName="some-invalid-class-name",
    )
    served = ingress(
        "served",
        [host_rule("served", path("/", "Prefix", "ours"))],
        ingressClassName="envoy-lifecycle",
    )
    await cluster.start(ours, theirs, served, flags=("--ingress-class", "envoy-lifecycle"))
    await cluster.settled("served", "/", "ours")
    assert (await cluster.send("GET", "ingress-class", "/"))[0] == 404


@FLAVOURS
async def test_load_balancing_uses_every_ready_pod_and_no_other(
    sotw: bool, cluster: Cluster
) -> None:
    ready = [f"127.0.0.{n}" for n in range(10, 20)]
    await cluster.pods("echo-service", ready, not_ready=["127.0.0.20", "127.0.0.21"])
    only_default = ingress("load-balancing", [], defaultBackend=backend("echo-service"))
    only_default["spec"].pop("rules")
    await cluster.start(only_default)
    await cluster.settled("load-balancing", "/", "echo-service")
    pods = set()
    for _ in range(100):
        status, echoed, _ = await cluster.send("GET", "load-balancing", "/")
        assert status == 200
        assert echoed is not None
        pods.add(echoed["pod"])
    assert pods == {f"echo-service-{address}" for address in ready}


DOCS_TABLE: list[tuple[list[tuple[str, str]], str, int | str | None]] = [
    # The examples table of the Kubernetes Ingress documentation: the rule's paths (path,
    # type), the request path, and which path serves it (its index), 404, or "default".
    ([("/", "Prefix")], "/any/thing", 0),
    ([("/foo", "Exact")], "/foo", 0),
    ([("/foo", "Exact")], "/bar", None),
    ([("/foo", "Exact")], "/foo/", None),
    ([("/foo/", "Exact")], "/foo", None),
    ([("/foo", "Prefix")], "/foo", 0),
    ([("/foo", "Prefix")], "/foo/", 0),
    ([("/foo/", "Prefix")], "/foo", 0),
    ([("/foo/", "Prefix")], "/foo/", 0),
    ([("/aaa/bb", "Prefix")], "/aaa/bbb", None),
    ([("/aaa/bbb", "Prefix")], "/aaa/bbb", 0),
    ([("/aaa/bbb/", "Prefix")], "/aaa/bbb", 0),
    ([("/aaa/bbb", "Prefix")], "/aaa/bbb/", 0),
    ([("/aaa/bbb", "Prefix")], "/aaa/bbb/ccc", 0),
    ([("/aaa/bbb", "Prefix")], "/aaa/bbbxyz", None),
    ([("/", "Prefix"), ("/aaa", "Prefix")], "/aaa/ccc", 1),
    ([("/", "Prefix"), ("/aaa", "Prefix"), ("/aaa/bbb", "Prefix")], "/aaa/bbb", 2),
    ([("/", "Prefix"), ("/aaa", "Prefix"), ("/aaa/bbb", "Prefix")], "/ccc", 0),
    ([("/aaa", "Prefix")], "/ccc", "default"),
    ([("/foo", "Prefix"), ("/foo", "Exact")], "/foo", 1),
]


@FLAVOURS
async def test_the_documentations_path_examples(sotw: bool, cluster: Cluster) -> None:
    await cluster.services("p0", "p1", "p2", "fallback")
    ingresses = []
    for row, (paths, _, expected) in enumerate(DOCS_TABLE):
        rule = host_rule(
            f"row{row}.example",
            *(path(value, kind, f"p{index}") for index, (value, kind) in enumerate(paths)),
        )
        spec: dict[str, Any] = (
            {"defaultBackend": backend("fallback")} if expected == "default" else {}
        )
        ingresses.append(ingress(f"row{row}", [rule], **spec))
    await cluster.start(*ingresses)
    await cluster.settled("row0.example", "/", "p0")
    for row, (_, target, expected) in enumerate(DOCS_TABLE):
        status, echoed, _ = await cluster.send("GET", f"row{row}.example", target)
        want = "fallback" if expected == "default" else None if expected is None else f"p{expected}"
        assert status == (200 if want else 404), (row, target)
        if echoed is not None:
            assert echoed["service"] == want, (row, target)


def aged(body: dict[str, Any], created: str) -> dict[str, Any]:
    body["metadata"]["creationTimestamp"] = created
    return body


OPEN_RULES = [
    aged(
        ingress(
            "dflt",
            [host_rule("dflt.example", path("/app", "Prefix", "app"))],
            defaultBackend=backend("dflt-default"),
        ),
        "2024-01-01T00:00:00Z",
    ),
    aged(
        ingress(
            "later-default",  # younger: its defaultBackend loses the unmatched hosts
            [host_rule(None, path("/hostless", "Prefix", "hostless"))],
            defaultBackend=backend("later-default"),
        ),
        "2025-01-01T00:00:00Z",
    ),
    aged(
        ingress("nodefault", [host_rule("nodefault.example", path("/app", "Prefix", "app"))]),
        "2024-06-01T00:00:00Z",
    ),
    aged(
        ingress("wild", [host_rule("*.wild.example", path("/app", "Prefix", "wild"))]),
        "2024-06-01T00:00:00Z",
    ),
    aged(
        ingress("copy", [host_rule("nodefault.example", path("/app", "Prefix", "copy"))]),
        "2026-01-01T00:00:00Z",  # the same host and path as an older one: not used
    ),
]

OPEN_SCENARIOS = [
    # (host, path, expected service or None for 404)
    ("dflt.example", "/app/x", "app"),
    ("dflt.example", "/other", "dflt-default"),  # its own defaultBackend, not a 404
    ("nodefault.example", "/other", None),  # no defaultBackend of its own: 404
    ("nodefault.example", "/app", "app"),  # the oldest of two identical rules
    ("a.wild.example", "/app", "wild"),
    ("a.wild.example", "/other", None),  # one label, no path: 404, like an exact host
    ("a.b.wild.example", "/hostless", "hostless"),  # deeper: no rule's host, so `*`
    ("a.b.wild.example", "/app", "dflt-default"),  # ... and the oldest defaultBackend
    ("unknown.example", "/anything", "dflt-default"),
]


@FLAVOURS
async def test_the_rules_kubernetes_leaves_open(sotw: bool, cluster: Cluster) -> None:
    await cluster.services("app", "dflt-default", "later-default", "hostless", "wild", "copy")
    await cluster.start(*OPEN_RULES)
    await cluster.settled("dflt.example", "/app", "app")
    for host, target, served_by in OPEN_SCENARIOS:
        status, echoed, _ = await cluster.send("GET", host, target)
        assert status == (200 if served_by else 404), (host, target)
        if echoed is not None:
            assert echoed["service"] == served_by, (host, target)
    assert cluster.server is not None
    rejected = " ".join((await cluster.server.status())["rejected"])
    assert "Ingress default/copy: Prefix /app on host nodefault.example is served by" in rejected
    assert "Ingress default/later-default: defaultBackend not used for requests" in rejected
