"""A real HAProxy (Debian's) in front of Envoy "nodes", health-checking their /ready."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from bench.lab.clients import Tally, steady_load
from bench.lab.envoy import free_port, stop_process
from bench.lab.pod import TerminationReport

CHECK_INTERVAL_MS = 100
"""Active health check every 100 ms; one failure takes a node out, two successes bring it in."""


def config(
    port: int, nodes: dict[str, tuple[str, int, int]], runtime: Path, l4: bool = False
) -> str:
    """nodes: name -> (address, ingress port, probe port); `runtime` is the admin socket (a
    node's address can change there, as an endpoint's does). HTTP mode; with `l4`, a layer-4
    balancer as a cloud's network load balancer behaves: TCP flows pinned to a node, a node
    whose health check fails has its established flows cut (`on-marked-down
    shutdown-sessions`), and one taken out by the runtime API (`set server ... state drain`,
    what the endpoint's removal does) gets no new flow but keeps its own."""
    servers = "\n".join(
        f"    server {name} {address}:{ingress} check port {probe}"
        for name, (address, ingress, probe) in nodes.items()
    )
    cut = " on-marked-down shutdown-sessions" if l4 else ""
    return f"""global
    maxconn 2000
    stats socket {runtime} mode 600 level admin
defaults
    mode {"tcp" if l4 else "http"}
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    # No retries: a request failed by a draining Envoy must show, not be re-sent.
    retries 0
frontend ingress
    bind 127.0.0.1:{port}
    default_backend envoys
backend envoys
    balance roundrobin
    option httpchk
    http-check send meth GET uri /ready ver HTTP/1.1 hdr Host envoy
    http-check expect status 200
    default-server inter {CHECK_INTERVAL_MS}ms fall 1 rise 2{cut}
{servers}
"""


class HAProxy:
    def __init__(
        self, workdir: Path, nodes: dict[str, tuple[str, int, int]], l4: bool = False
    ) -> None:
        self.port = free_port()
        self.path = workdir / "haproxy.cfg"
        self.runtime = workdir / "haproxy.sock"
        self.path.write_text(config(self.port, nodes, self.runtime, l4))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def start(self, timeout: float = 10.0) -> HAProxy:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        self.proc = subprocess.Popen(
            [binary, "-db", "-f", str(self.path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(trust_env=False, timeout=1) as client:
            while time.monotonic() < deadline:
                try:
                    if (await client.get(self.url)).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
        raise TimeoutError("haproxy did not serve")

    async def command(self, line: str) -> str:
        """One runtime API command (the stats socket)."""
        reader, writer = await asyncio.open_unix_connection(str(self.runtime))
        writer.write(line.encode() + b"\n")
        await writer.drain()
        answer = await reader.read()
        writer.close()
        await writer.wait_closed()
        return answer.decode()

    async def take_out(self, server: str) -> None:
        """No new flow to `server`, established ones kept: the endpoint left the Service."""
        answer = await self.command(f"set server envoys/{server} state drain")
        if answer.strip():
            raise RuntimeError(f"haproxy refused to drain {server}: {answer.strip()}")

    async def move(self, server: str, address: str) -> None:
        """The node's endpoint has a new address (a new pod in its place)."""
        answer = await self.command(f"set server envoys/{server} addr {address}")
        if "changed" not in answer and answer.strip():
            raise RuntimeError(f"haproxy refused the address of {server}: {answer.strip()}")

    def stop(self) -> None:
        stop_process(self.proc)


async def roll(
    proxy: HAProxy,
    nodes: list[str],
    replace: Callable[[str], Awaitable[TerminationReport]],
    pause: float = 0.01,
) -> tuple[Tally, list[TerminationReport]]:
    """A rolling restart under continuous load through `proxy`: `replace(node)` deletes the
    node's pod the kubelet's way and puts a new one in its place (returning the deletion's
    report); HAProxy is given time to bring it back (`rise 2`) before the next node goes."""
    stop, tally = asyncio.Event(), Tally()
    load = [asyncio.create_task(steady_load(proxy.url, stop, tally, pause=pause)) for _ in range(4)]
    reports: list[TerminationReport] = []
    try:
        for node in nodes:
            await asyncio.sleep(0.5)
            reports.append(await replace(node))
            await asyncio.sleep(3 * CHECK_INTERVAL_MS / 1000)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*load)
    return tally, reports
