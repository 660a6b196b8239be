"""The xDS server and Envoys fed by it, as real processes; manifests written like kubectl would."""

from __future__ import annotations

import asyncio
import base64
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml

from bench.lab.certs import loaded_client_serial
from bench.lab.envoy import envoy_binary, free_port, stop_process

XDS = [sys.executable, "-m", "xds_server"]


def service(name: str, ports: list[tuple[str, int]], namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": [{"name": n, "port": p, "targetPort": p} for n, p in ports]},
    }


def endpoint_slice(
    service_name: str,
    port_name: str,
    port: int,
    addresses: list[str],
    ready: bool = True,
    namespace: str = "default",
    suffix: str = "a",
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service_name}-{suffix}",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": ready}} for a in addresses],
    }


def ingress(
    name: str, rules: list[dict[str, Any]], namespace: str = "default", **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"rules": rules, **spec},
    }


def tls_secret(
    name: str, certificate: bytes, key: bytes, namespace: str = "default"
) -> dict[str, Any]:
    """A `kubernetes.io/tls` Secret, as an Ingress' TLS section names it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace},
        "data": {
            "tls.crt": base64.b64encode(certificate).decode(),
            "tls.key": base64.b64encode(key).decode(),
        },
    }


async def https_get(port: int, host: str, ca: bytes) -> tuple[str, list[str]]:
    """GET / from Envoy over TLS with SNI `host`, the hostname verified against `ca`: the
    body and the DNS names of the certificate served. Retries the connection while the
    https listener warms (it waits for its secrets)."""
    from cryptography import x509

    context = ssl.create_default_context(cadata=ca.decode())
    for attempt in range(100):
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname=host
            )
            break
        except (OSError, ssl.SSLError):
            if attempt == 99:
                raise
            await asyncio.sleep(0.05)
    peer = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    names = x509.load_der_x509_certificate(peer).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    body = (await reader.read()).split(b"\r\n\r\n", 1)[1].decode()
    writer.close()
    return body, names.value.get_values_for_type(x509.DNSName)


def ingress_class(name: str, default: bool = False) -> dict[str, Any]:
    annotations = {"ingressclass.kubernetes.io/is-default-class": "true"} if default else {}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {"name": name, "annotations": annotations},
    }


def rule(host: str | None, *paths: tuple[str, str, str, int | str]) -> dict[str, Any]:
    """paths: (path, pathType, service, port number or name)."""
    body: dict[str, Any] = {
        "http": {
            "paths": [
                {
                    "path": p,
                    "pathType": t,
                    "backend": {
                        "service": {
                            "name": s,
                            "port": ({"number": port} if isinstance(port, int) else {"name": port}),
                        }
                    },
                }
                for p, t, s, port in paths
            ]
        }
    }
    if host:
        body["host"] = host
    return body


def write_manifests(directory: Path, name: str, objects: list[dict[str, Any]]) -> None:
    """Atomically, as a deploy tool would: a reader never sees half a file."""
    tmp = directory / f".{name}.tmp"
    tmp.write_text(yaml.safe_dump_all(objects))
    tmp.rename(directory / f"{name}.yaml")


class XdsServer:
    def __init__(
        self,
        workdir: Path,
        manifests: Path | None,
        *flags: str,
        certs_dir: Path | None = None,
        envoy_address: str = "127.0.0.1",
    ) -> None:
        self.certs_dir = certs_dir
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.envoy_http_port = free_port(envoy_address)
        self.envoy_https_port = free_port()
        self.serving_port = self.envoy_http_port
        self.serving_listener = "ingress_http"
        """Where clients reach Envoy's HTTP routes: the Ingress listener, or a Gateway
        listener (`serve_one_backend(routes="gateway")`)."""
        security = ["--certs-dir", str(certs_dir)] if certs_dir else ["--insecure"]
        self.log_path = workdir / f"xds-{self.grpc_port}.log"
        self.args = [
            *XDS,
            "serve",
            *(["--manifests", str(manifests)] if manifests else ["--kubernetes"]),
            "--listen",
            f"127.0.0.1:{self.grpc_port}",
            "--http-listen",
            f"127.0.0.1:{self.http_port}",
            "--envoy-address",
            envoy_address,
            "--envoy-http-port",
            str(self.envoy_http_port),
            "--envoy-https-port",
            str(self.envoy_https_port),
            *security,
            "--log-format",
            "json",
            *flags,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 20) -> XdsServer:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args, stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(self.log())
                try:
                    if (
                        await client.get(f"http://127.0.0.1:{self.http_port}/readyz")
                    ).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
        raise TimeoutError(self.log())

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    async def metrics(self) -> str:
        return (await self.get("/metrics")).text

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            return await client.get(f"http://127.0.0.1:{self.http_port}{path}")

    async def status(self) -> dict[str, Any]:
        """`GET /status`: the serial, the source's problem and the current rejections."""
        body: dict[str, Any] = (await self.get("/status")).json()
        return body

    def stop(self) -> None:
        stop_process(self.proc)


class XdsEnvoy:
    """An Envoy whose whole config comes from the xDS server (bootstrap by `xds-server`)."""

    def __init__(
        self,
        workdir: Path,
        server: XdsServer,
        node: str,
        sotw: bool = False,
        certs_dir: Path | None = None,
        hot_restart: bool = False,
    ) -> None:
        self.certs_dir = certs_dir
        self.base_id = free_port() if hot_restart else None
        """Unique per Envoy (a free port number), so parallel tests never share memory."""
        self.epoch = 0
        self.parents: list[subprocess.Popen[bytes]] = []
        self.workdir = workdir / node
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.server = server
        self.node = node
        self.sotw = sotw
        self.admin_socket = self.workdir / "admin.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> XdsEnvoy:
        bootstrap = self.workdir / "bootstrap.json"
        result = subprocess.run(  # noqa: ASYNC221 - a quick one-shot command
            [
                *XDS,
                "bootstrap",
                str(bootstrap),
                "--xds-address",
                f"127.0.0.1:{self.server.grpc_port}",
                "--admin-socket",
                str(self.admin_socket),
                "--node-id",
                self.node,
                *(["--certs-dir", str(self.certs_dir)] if self.certs_dir else ["--insecure"]),
                "--probe-port",
                str(free_port()),
                *(["--sotw"] if self.sotw else []),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        self.proc = subprocess.Popen(self._argv(bootstrap), stdin=subprocess.DEVNULL)
        await self.wait_listener()
        return self

    def _argv(self, bootstrap: Path) -> list[str]:
        if self.base_id is None:
            restart = ["--disable-hot-restart"]
        else:
            restart = ["--base-id", str(self.base_id), "--restart-epoch", str(self.epoch)]
            restart += ["--drain-time-s", "1", "--parent-shutdown-time-s", "2"]
        return [
            envoy_binary(),
            "-c", str(bootstrap),
            *restart,
            "--drain-strategy", "immediate",
            "--concurrency", "1",
            "-l", "warning",
            "--log-path", str(self.workdir / "envoy.log"),
        ]  # fmt: skip

    async def hot_restart(self, timeout: float = 20) -> None:
        """Start the next epoch (it reads the bootstrap and certificates from disk now) and
        wait until the parent has handed over and exited."""
        assert self.base_id is not None
        assert self.proc is not None
        self.epoch += 1
        self.parents.append(self.proc)
        self.proc = subprocess.Popen(
            self._argv(self.workdir / "bootstrap.json"), stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while any(parent.poll() is None for parent in self.parents):
            assert time.monotonic() < deadline, "the parent epoch did not exit"
            assert self.proc.poll() is None, "the new epoch exited"
            await asyncio.sleep(0.05)

    async def loaded_certificates(self) -> list[dict[str, Any]]:
        """Admin /certs: the certificates Envoy has loaded now (serials, expiry)."""
        async with self.admin() as admin:
            return list((await admin.get("/certs")).json()["certificates"])

    async def client_serial(self) -> str:
        """The serial of the client certificate loaded for the xDS connection."""
        return await loaded_client_serial(self.admin_socket)

    async def trusted_serials(self) -> set[str]:
        """The serials of the CAs it trusts for the xDS server."""
        return {
            str(cert["serial_number"]).lower().lstrip("0")
            for entry in await self.loaded_certificates()
            for cert in entry.get("ca_cert", [])
        }

    def admin(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(self.admin_socket)),
            base_url="http://admin",
            timeout=5,
        )

    async def stats(self, pattern: str) -> dict[str, int]:
        async with self.admin() as admin:
            body = (await admin.get("/stats", params={"format": "json", "filter": pattern})).json()
        return {s["name"]: int(s["value"]) for s in body["stats"] if "value" in s}

    async def wait_listener(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                async with self.admin() as admin:
                    listeners = (await admin.get("/listeners?format=json")).json()
                if any(x["name"] == "ingress_http" for x in listeners["listener_statuses"]):
                    return
            except (httpx.HTTPError, OSError, ValueError, KeyError):
                pass
            await asyncio.sleep(0.05)
        raise TimeoutError(
            (self.workdir / "envoy.log").read_text()[-2000:]
            if (self.workdir / "envoy.log").exists()
            else "no log"
        )

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.server.serving_port}{path}"

    def stop(self) -> None:
        for proc in [*self.parents, self.proc]:
            stop_process(proc)


Routes = Literal["ingress", "gateway"]
CONTROLLER = "envoy-lifecycle.io/gateway-controller"


def gateway_objects(port: int, namespace: str = "default") -> list[dict[str, Any]]:
    """A GatewayClass of ours and Gateway `edge` with one HTTP listener on `port` (at the
    Envoy address), routes from every HTTPRoute of its namespace."""
    group = "gateway.networking.k8s.io"
    return [
        {
            "apiVersion": f"{group}/v1",
            "kind": "GatewayClass",
            "metadata": {"name": "envoy-lifecycle"},
            "spec": {"controllerName": CONTROLLER},
        },
        {
            "apiVersion": f"{group}/v1",
            "kind": "Gateway",
            "metadata": {"name": "edge", "namespace": namespace},
            "spec": {
                "gatewayClassName": "envoy-lifecycle",
                "listeners": [{"name": "http", "port": port, "protocol": "HTTP"}],
            },
        },
    ]


ROUTES: tuple[Routes, ...] = ("ingress", "gateway")


def one_backend(
    backend_port: int, routes: Routes = "ingress", gateway_port: int = 0
) -> list[dict[str, Any]]:
    """Manifests that route every host and path to one backend on 127.0.0.1: by an Ingress,
    or by an HTTPRoute on a Gateway listening on `gateway_port` (at the Envoy address)."""
    found = [
        service("backend", [("http", 80)]),
        endpoint_slice("backend", "http", backend_port, ["127.0.0.1"]),
    ]
    if routes == "ingress":
        return [*found, ingress("all", [rule(None, ("/", "Prefix", "backend", 80))])]
    group = "gateway.networking.k8s.io"
    return [
        *found,
        *gateway_objects(gateway_port),
        {
            "apiVersion": f"{group}/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "all", "namespace": "default"},
            "spec": {
                "parentRefs": [{"name": "edge"}],
                "rules": [{"backendRefs": [{"name": "backend", "port": 80}]}],
            },
        },
    ]


async def serve_one_backend(
    workdir: Path,
    backend_port: int,
    envoy_address: str = "127.0.0.1",
    certs_dir: Path | None = None,
    routes: Routes = "ingress",
) -> XdsServer:
    """An xDS server over `one_backend` manifests, started (over mTLS with `certs_dir`)."""
    manifests = workdir / "manifests"
    manifests.mkdir(parents=True)
    server = XdsServer(workdir, manifests, envoy_address=envoy_address, certs_dir=certs_dir)
    if routes == "gateway":
        server.serving_port = free_port(envoy_address)
        server.serving_listener = f"gateway_{envoy_address}_{server.serving_port}"
    write_manifests(manifests, "app", one_backend(backend_port, routes, server.serving_port))
    return await server.start()


def app(backends: dict[str, Any], names: str = "abcd") -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for name in names:
        objects.append(service(name, [("http", 80)]))
        objects.append(endpoint_slice(name, "http", backends[name].port, ["127.0.0.1"]))
    return objects


async def who(envoy: XdsEnvoy, host: str, path: str) -> str:
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        response = await client.get(envoy.url(path), headers={"Host": host})
    return response.text if response.status_code == 200 else str(response.status_code)
