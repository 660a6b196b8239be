"""A Gateway API cluster for conformance tests and benches: the conformance suite's
namespaces and backends (echo pods answering the harness's JSON), a GatewayClass of ours,
`xds-server serve --manifests` with each Gateway at its own loopback address from
--gateway-address-pool, and a real Envoy. Objects are written like `kubectl apply`;
`applied` removes a test's own objects afterwards, as the Go harness cleans up.

The harness's checks: status first, polled until it holds; then each request until the
expected answer comes three times in a row.
"""

from __future__ import annotations

import asyncio
import datetime
import random
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.lab.echo import Echo
from bench.lab.envoy import free_port
from bench.lab.xds import XdsEnvoy, XdsServer, endpoint_slice, service, tls_secret, write_manifests
from xds_server.certs import pki

INFRA, WEB, APP = (
    "gateway-conformance-infra",
    "gateway-conformance-web-backend",
    "gateway-conformance-app-backend",
)
GROUP = "gateway.networking.k8s.io"
CONTROLLER = "envoy-lifecycle.io/gateway-controller"
CLASS = "envoy-lifecycle"
BACKENDS = {
    INFRA: ["infra-backend-v1", "infra-backend-v2", "infra-backend-v3"],
    WEB: ["web-backend"],
    APP: ["app-backend-v1", "app-backend-v2"],
}
CERT_NAMES = ["example.org", "*.example.org", "second-example.org", "secure.test.com"]
CONSECUTIVE = 3
"""The harness's rule: an answer counts once it comes three times in a row."""
WAIT = 15.0
"""Seconds a status or an answer may take to become what a test expects."""


# -- manifests -------------------------------------------------------------------------


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def gateway(
    name: str, *listeners: dict[str, Any], ns: str = INFRA, generation: int = 1
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1beta1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns, "generation": generation},
        "spec": {"gatewayClassName": CLASS, "listeners": list(listeners)},
    }


def listener(name: str, port: int, origin: str = "Same", **extra: Any) -> dict[str, Any]:
    namespaces: dict[str, Any] = {"from": origin}
    if origin == "Selector":
        namespaces["selector"] = {"matchLabels": {"gateway-conformance": "backend"}}
    return {
        "name": name,
        "port": port,
        "protocol": "HTTP",
        "allowedRoutes": {"namespaces": namespaces},
        **extra,
    }


def https_listener(
    name: str, port: int, *certificates: dict[str, Any], origin: str = "All", **extra: Any
) -> dict[str, Any]:
    found = listener(name, port, origin, **extra)
    found["protocol"] = "HTTPS"
    found["tls"] = {"certificateRefs": list(certificates)}
    return found


def certificate_ref(name: str, ns: str | None = None, **extra: Any) -> dict[str, Any]:
    found: dict[str, Any] = {"group": "", "kind": "Secret", "name": name, **extra}
    if ns is not None:
        found["namespace"] = ns
    return found


def route(
    name: str,
    parents: list[dict[str, Any]],
    rules: list[dict[str, Any]],
    ns: str = INFRA,
    hostnames: list[str] | None = None,
    generation: int = 1,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"parentRefs": parents, "rules": rules}
    if hostnames is not None:
        spec["hostnames"] = hostnames
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": ns, "generation": generation},
        "spec": spec,
    }


def parent(name: str, ns: str = INFRA, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": ns, **extra}


def to(name: str, port: int = 8080, **extra: Any) -> dict[str, Any]:
    return {"name": name, "port": port, **extra}


def rule(
    *backends: dict[str, Any],
    matches: list[dict[str, Any]] | None = None,
    filters: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    found: dict[str, Any] = {"backendRefs": list(backends), **extra}
    if matches is not None:
        found["matches"] = matches
    if filters is not None:
        found["filters"] = filters
    return found


def prefix(value: str, **extra: Any) -> dict[str, Any]:
    return {"path": {"type": "PathPrefix", "value": value}, **extra}


def exact(value: str, **extra: Any) -> dict[str, Any]:
    return {"path": {"type": "Exact", "value": value}, **extra}


def header(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def modifier(**edits: Any) -> dict[str, Any]:
    return {"type": "RequestHeaderModifier", "requestHeaderModifier": edits}


def redirect(**spec: Any) -> dict[str, Any]:
    return {"type": "RequestRedirect", "requestRedirect": spec}


def grant(
    name: str, ns: str, sources: list[tuple[str, str, str]], targets: list[tuple[str, str, str]]
) -> dict[str, Any]:
    """A ReferenceGrant: sources (group, kind, namespace), targets (group, kind, name; an
    empty name: every object of the kind)."""
    return {
        "apiVersion": f"{GROUP}/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "from": [{"group": g, "kind": k, "namespace": n} for g, k, n in sources],
            "to": [{"group": g, "kind": k, **({"name": n} if n else {})} for g, k, n in targets],
        },
    }


def server_certificate() -> tuple[pki.Pair, pki.Pair]:
    """The suite's CA and the server certificate it signed, for the names tests ask for."""
    ca = pki.issue_ca("gateway-conformance", datetime.timedelta(days=1), "ecdsa-p256")
    leaf = pki.issue_leaf(
        ca, CERT_NAMES[0], CERT_NAMES, "server", datetime.timedelta(days=1), "ecdsa-p256"
    )
    return ca, leaf


# -- the cluster -----------------------------------------------------------------------


class Conformance:
    """Backends, a server and an Envoy, with the suite's base manifests and the test's."""

    def __init__(self, workdir: Path, objects: Callable[[Conformance], list[dict[str, Any]]]):
        self.workdir = workdir
        self.manifests = workdir / "manifests"
        self.port = free_port()
        self.tls_port = free_port()
        self.ca, self.certificate = server_certificate()
        self.objects = objects
        self.echos: dict[str, Echo] = {}
        self.server: XdsServer | None = None
        self.envoy: XdsEnvoy | None = None

    async def start(self) -> Conformance:
        self.manifests.mkdir()
        base: list[dict[str, Any]] = [
            {
                "apiVersion": f"{GROUP}/v1",
                "kind": "GatewayClass",
                "metadata": {"name": CLASS, "generation": 2},
                "spec": {"controllerName": CONTROLLER},
            },
            namespace(INFRA, **{"gateway-conformance": "infra"}),
            namespace(WEB, **{"gateway-conformance": "backend"}),
            namespace(APP, **{"gateway-conformance": "backend"}),
            tls_secret(
                "tls-validity-checks-certificate",
                self.certificate.certificate,
                self.certificate.key,
                namespace=INFRA,
            ),
        ]
        for ns, names in BACKENDS.items():
            for name in names:
                base += await self.backend(name, ns)
        write_manifests(self.manifests, "base", [*base, *self.objects(self)])
        pool = f"127.{random.randrange(100, 250)}.0.0/16"
        self.server = XdsServer(self.workdir, self.manifests, "--gateway-address-pool", pool)
        await self.server.start()
        self.envoy = XdsEnvoy(self.workdir, self.server, "conformance")
        await self.envoy.start()
        return self

    async def backend(self, name: str, ns: str, port_name: str = "http") -> list[dict[str, Any]]:
        """A Service of one echo pod, and its EndpointSlice."""
        echo = await Echo(name, pod=f"{name}-pod", namespace=ns).start()
        self.echos[name] = echo
        return [
            service(name, [(port_name, 8080)], namespace=ns),
            endpoint_slice(name, port_name, echo.port, ["127.0.0.1"], namespace=ns),
        ]

    async def stop(self) -> None:
        for process in (self.envoy, self.server):
            if process is not None:
                process.stop()
        for echo in self.echos.values():
            await echo.stop()

    @asynccontextmanager
    async def applied(self, name: str, objects: list[dict[str, Any]]) -> AsyncIterator[None]:
        """A test's own objects, deleted when it ends."""
        write_manifests(self.manifests, name, objects)
        try:
            yield
        finally:
            (self.manifests / f"{name}.yaml").unlink()

    def apply(self, name: str, objects: list[dict[str, Any]]) -> None:
        write_manifests(self.manifests, name, objects)

    async def status(self, key: str) -> dict[str, Any]:
        assert self.server is not None
        found: dict[str, Any] = (await self.server.status()).get(key) or {}
        return found

    async def eventually(
        self, key: str, check: Callable[[dict[str, Any]], object]
    ) -> dict[str, Any]:
        """The object's status once `check` passes on it (returns truthy, raises nothing)."""
        deadline = asyncio.get_running_loop().time() + WAIT
        while True:
            status = await self.status(key)
            try:
                if check(status):
                    return status
                problem = f"check returned false on {status}"
            except (AssertionError, KeyError, IndexError, ValueError) as exc:
                problem = f"{exc!r} on {status}"
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{key}: {problem}")
            await asyncio.sleep(0.05)

    async def address(self, name: str, ns: str = INFRA) -> str:
        status = await self.eventually(f"Gateway/{ns}/{name}", lambda s: s["addresses"][0])
        value: str = status["addresses"][0]["value"]
        return value

    async def send(
        self,
        gateway_name: str,
        host: str,
        path: str,
        headers: dict[str, str] | None = None,
        *,
        sni: str | None = None,
        method: str = "GET",
    ) -> httpx.Response:
        """One request to the Gateway's address: over TLS with `sni` when given."""
        address = await self.address(gateway_name)
        scheme, port, extensions = "http", self.port, {}
        verify: ssl.SSLContext | bool = False
        if sni is not None:
            scheme, port = "https", self.tls_port
            verify = ssl.create_default_context(cadata=self.ca.certificate.decode())
            verify.check_hostname = False  # the harness sends names the certificate lacks
            extensions = {"sni_hostname": sni}
        async with httpx.AsyncClient(trust_env=False, timeout=5, verify=verify) as client:
            return await client.request(
                method,
                f"{scheme}://{address}:{port}{path}",
                headers={"Host": host, **(headers or {})},
                extensions=extensions,
            )

    async def expect(
        self,
        gateway_name: str,
        host: str,
        path: str,
        *,
        backend: str | None = None,
        status: int = 200,
        ns: str = INFRA,
        headers: dict[str, str] | None = None,
        sni: str | None = None,
        method: str = "GET",
    ) -> httpx.Response:
        """The harness's eventually consistent check: the expected answer three times in a
        row, within WAIT seconds."""
        seen, streak = "", 0
        deadline = asyncio.get_running_loop().time() + WAIT
        while asyncio.get_running_loop().time() < deadline:
            try:
                last = await self.send(gateway_name, host, path, headers, sni=sni, method=method)
            except httpx.HTTPError as exc:
                seen, streak = repr(exc), 0
                await asyncio.sleep(0.05)
                continue
            got = described(last)
            wanted = status == last.status_code and (
                backend is None
                or (got.get("namespace") == ns and str(got.get("pod", "")).startswith(backend))
            )
            streak = streak + 1 if wanted else 0
            seen = f"{last.status_code} {got}"
            if streak >= CONSECUTIVE:
                return last
            await asyncio.sleep(0.05)
        raise AssertionError(f"{host}{path}: wanted {status} {backend}, last saw {seen}")


def described(response: httpx.Response) -> dict[str, Any]:
    try:
        found: dict[str, Any] = response.json()
        return found
    except ValueError:
        return {}


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def parent_conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    (only,) = status["parents"]
    assert only["controllerName"] == CONTROLLER
    return conditions(only)


def listener_status(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {x["name"]: x for x in status["listeners"]}
