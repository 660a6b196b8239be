"""`make demo`: an Envoy pod under mixed load, terminated the kubelet's way, with a report.

The story, on this machine, in under half a minute:

1. A backend, `xds-server` reading a directory of Kubernetes manifests (Service,
   EndpointSlice, and an Ingress or, with `--routes gateway`, a Gateway and an HTTPRoute),
   and a pod of real processes started by the kubelet-faithful pod
   runner: Envoy 1.40 (bootstrap from `xds-server bootstrap`, routes over delta ADS, admin on a
   unix socket in the pod's shared directory) and the `shutdown-manager serve` sidecar.
2. Mixed load: HTTP/1.1 keep-alive clients, HTTP/2 multiplexed, long streaming
   responses, a TCP-proxy tunnel, an idle pooled client, and fresh connections. Halfway
   through, the mTLS certificates of Envoy and xds-server are rotated under the load.
3. The pod is deleted: both preStop hooks start in parallel (Envoy's httpGet `/shutdown`,
   the sidecar's exec `shutdown-manager drain`); each container gets SIGTERM when its own
   hook returns; SIGKILL waits at the grace period. New requests keep arriving for 1.5 s
   (endpoints and load balancers catching up), then stop; long clients end on their own.
4. A live line shows the drain; the report shows every client's outcome, the pod's timeline
   and the drain's result, and `--timeline FILE.png` plots connections and requests.

5. Then (`--scenario backends`, or both by default) the other half: three pods of an app
   behind Envoy replaced as a Deployment does, with the requests each client sent and lost.

Exit status 0 only with zero failed requests (the backends' part: bench/demo.py
`backend_story` says which).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.lab.backend import Backend
from bench.lab.certs import init_certs, loaded_client_serial, stored_serial
from bench.lab.clients import Tally, TcpConnection, http_client, streaming_request
from bench.lab.dashboard_png import render as dashboard_png_render
from bench.lab.envoy import probe_connections
from bench.lab.envoy_pod import WIRINGS, EnvoyPod, Wiring, envoy_pod
from bench.lab.h2client import h2_load
from bench.lab.pod import TerminationReport
from bench.lab.prometheus import Prometheus, pod_targets
from bench.lab.prometheus import binary as prometheus_binary
from bench.lab.rollout import from_manifests, through_envoy
from bench.lab.xds import ROUTES, Routes, XdsServer, serve_one_backend
from envoy_lifecycle.monitoring.alerts import rules_file
from xds_server.certs.directory import CertDirectory
from xds_server.certs.rotation import Rotator

LOAD_BEFORE = 3.0
"""Seconds of load before the pod is deleted."""

ENDPOINTS_LAG = 1.5
"""Seconds new requests keep arriving after deletion."""

MIN_DRAIN = 3.0
GRACE = 15.0
ROUTE_SOURCES = {"ingress": "an Ingress", "gateway": "a Gateway and an HTTPRoute"}

console = Console()


@dataclass
class Timeline:
    """Samples for the PNG: active connections, and request outcomes per moment."""

    start: float = field(default_factory=time.monotonic)
    connections: list[tuple[float, int]] = field(default_factory=list)
    requests: list[tuple[float, bool]] = field(default_factory=list)

    def request(self, ok: bool) -> None:
        self.requests.append((time.monotonic() - self.start, ok))


class Clients:
    """All the demo's clients, each with its own tally."""

    def __init__(self, pod: EnvoyPod, timeline: Timeline) -> None:
        self.pod = pod
        self.timeline = timeline
        self.stop = asyncio.Event()
        self.tallies: dict[str, Tally] = {}

    def tally(self, name: str) -> Tally:
        return self.tallies.setdefault(name, Tally())

    def _record(self, tally: Tally, ok: bool, error: object = None) -> None:
        if ok:
            tally.ok += 1
        else:
            tally.failed += 1
            tally.errors.append(repr(error))
        self.timeline.request(ok)

    async def keepalive(self) -> None:
        tally = self.tally("HTTP/1.1 keep-alive (x4)")
        async with http_client() as client:
            while not self.stop.is_set():
                try:
                    response = await client.get(self.pod.envoy.url("/slow?s=0.02"))
                    self._record(tally, response.status_code == 200, response.status_code)
                except httpx.HTTPError as exc:
                    self._record(tally, False, exc)

    async def fresh_connections(self) -> None:
        tally = self.tally("new connection per request")
        while not self.stop.is_set():
            async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
                try:
                    response = await client.get(self.pod.envoy.url())
                    self._record(tally, response.status_code == 200, response.status_code)
                except httpx.HTTPError as exc:
                    self._record(tally, False, exc)
            await asyncio.sleep(0.05)

    async def idle_pool(self, again_at: float) -> None:
        tally = self.tally("idle pooled, sends mid-drain")
        async with http_client() as client:
            for when in (0.0, again_at):
                await asyncio.sleep(max(0.0, when - time.monotonic()))
                try:
                    response = await client.get(self.pod.envoy.url())
                    self._record(tally, response.status_code == 200, response.status_code)
                except httpx.HTTPError as exc:
                    self._record(tally, False, exc)

    async def tunnel(self, until: float) -> None:
        tally = self.tally("TCP proxy tunnel")
        tunnel = await TcpConnection(self.pod.envoy.ports["tcp_passthrough"]).open()
        try:
            while time.monotonic() < until:
                self._record(tally, await tunnel.request())
                await asyncio.sleep(0.25)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            self._record(tally, False, exc)
        finally:
            await tunnel.close()

    async def streams(self) -> None:
        tally = self.tally("streaming responses (x2)")
        await asyncio.gather(
            *(streaming_request(self.pod.envoy.url("/stream?n=12&d=0.5"), tally) for _ in range(2))
        )

    async def http2(self) -> None:
        await h2_load(
            self.pod.envoy.url(), self.stop, self.tally("HTTP/2 multiplexed (2x8 streams)")
        )


async def sample(pod: EnvoyPod, timeline: Timeline, done: asyncio.Event) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=1) as client:
        while not done.is_set():
            total = await probe_connections(client, pod.envoy.ports["probe"])
            if total is not None:
                timeline.connections.append((time.monotonic() - timeline.start, total))
            await asyncio.sleep(0.05)


def status_line(pod: EnvoyPod, started: float | None, timeline: Timeline) -> Text:
    latest = timeline.connections[-1][1] if timeline.connections else 0
    if started is None:
        return Text(f"serving: {latest} active connections", style="green")
    elapsed = time.monotonic() - started
    return Text(
        f"draining: {latest} active connections, {elapsed:4.1f}s since deletion", style="yellow"
    )


async def story(
    work: Path,
    timeline_png: Path | None,
    wiring: Wiring,
    routes: Routes,
    dashboard_png: Path | None = None,
) -> int:
    backend = await Backend().start()
    certs = init_certs(work / "certs")
    xds = await serve_one_backend(work / "xds", backend.port, certs_dir=certs.root, routes=routes)
    pod = envoy_pod(
        work, backend.port, min_drain=MIN_DRAIN, drain_timeout=GRACE - 3, grace_period=GRACE,
        xds=xds, wiring=wiring,
    )  # fmt: skip
    prometheus: Prometheus | None = None
    try:
        await pod.start()
        console.print(
            f"[bold]Pod up[/]: Envoy 1.40 at {pod.envoy.url()} + shutdown-manager as a "
            f"{wiring} sidecar; its routes come from xds-server (delta ADS over mTLS) reading "
            f"a directory of manifests ({ROUTE_SOURCES[routes]})"
        )
        prometheus = await watch(work, pod, xds) if dashboard_png is not None else None
        began = time.time()
        failed = await run(pod, timeline_png, certs)
        if prometheus is not None and dashboard_png is not None:
            await asyncio.sleep(2)  # the last scrapes
            await dashboard_png_render(prometheus, began, time.time(), dashboard_png)
            firing = await prometheus.firing()
            console.print(f"Alerts firing: {', '.join(firing) or 'none'}")
            console.print(f"Dashboard panels from the scraped series written to {dashboard_png}")
        return failed
    finally:
        if prometheus is not None:
            prometheus.stop()
        pod.pod.kill()
        xds.stop()
        await backend.stop()


async def watch(work: Path, pod: EnvoyPod, xds: XdsServer) -> Prometheus | None:
    """A real Prometheus scraping the sidecar, Envoy and xds-server with our alerts loaded,
    as the monitoring component would (docs/operations.md); None without the binary."""
    if prometheus_binary() is None:
        console.print("Prometheus not installed (`make setup` installs it): no dashboard")
        return None
    rules = work / "rules.yaml"
    rules.write_text(yaml.safe_dump(rules_file(), sort_keys=False))
    targets = pod_targets(pod.sidecar_port, pod.envoy.ports["probe"], xds.http_port, "envoy-0")
    prometheus = await Prometheus(work / "prometheus", targets, rules).start()
    console.print(f"[bold]Prometheus[/] scraping the pod and xds-server: {prometheus.url}")
    return prometheus


async def rotate_certificates(pod: EnvoyPod, certs: CertDirectory) -> None:
    """Mid-load: renew both mTLS leaves and show Envoy and the server using them."""
    before = {which: stored_serial(certs, which) for which in ("server", "envoy")}
    began = time.monotonic()
    await asyncio.to_thread(Rotator(certs, propagation_delay=1).step, True)
    after = {which: stored_serial(certs, which) for which in ("server", "envoy")}
    loaded = None
    for _ in range(1000):  # Envoy's watched directory reloads within a few ms
        if await loaded_client_serial(pod.envoy.admin_socket) == after["envoy"]:
            loaded = time.monotonic() - began
            break
        await asyncio.sleep(0.001)
    took = f"{loaded * 1000:.0f} ms" if loaded is not None else "NOT within 1 s"
    console.print(
        f"[bold]Certificates rotated[/]: Envoy client {before['envoy'][:8]}.. -> "
        f"{after['envoy'][:8]}.. issued, stored and loaded by Envoy in {took}; server "
        f"{before['server'][:8]}.. -> {after['server'][:8]}.. for new handshakes; "
        "no restart, xDS stream kept"
    )


async def run(pod: EnvoyPod, timeline_png: Path | None, certs: CertDirectory) -> int:
    timeline = Timeline()
    clients = Clients(pod, timeline)
    begin = time.monotonic()
    deleted_at = begin + LOAD_BEFORE
    done = asyncio.Event()
    sampler = asyncio.create_task(sample(pod, timeline, done))
    tasks = [
        *(asyncio.create_task(clients.keepalive()) for _ in range(4)),
        asyncio.create_task(clients.fresh_connections()),
        asyncio.create_task(clients.idle_pool(deleted_at + 1.0)),
        asyncio.create_task(clients.tunnel(deleted_at + 2.5)),
        asyncio.create_task(clients.streams()),
        asyncio.create_task(clients.http2()),
    ]
    started: float | None = None
    with Live(
        status_line(pod, None, timeline), console=console, refresh_per_second=10, transient=True
    ) as live:
        ticker = asyncio.create_task(_refresh(live, pod, lambda: started, timeline, done))
        await asyncio.sleep(LOAD_BEFORE / 2)
        await rotate_certificates(pod, certs)
        await asyncio.sleep(max(0.0, deleted_at - time.monotonic()))
        console.print("[bold]Pod deleted[/]: preStop hooks start in parallel")
        started = time.monotonic()
        deletion = asyncio.create_task(pod.pod.delete())
        await asyncio.sleep(ENDPOINTS_LAG)
        clients.stop.set()
        console.print("Endpoints updated: no new requests reach this pod")
        report = await deletion
        done.set()
        await ticker
    await asyncio.gather(*tasks, sampler)
    failed = print_report(clients, report, pod, started - timeline.start)
    if timeline_png is not None:
        plot(timeline, started - timeline.start, report.gone_at - timeline.start, timeline_png)
    return 0 if failed == 0 else 1


async def _refresh(
    live: Live, pod: EnvoyPod, started: object, timeline: Timeline, done: asyncio.Event
) -> None:
    while not done.is_set():
        live.update(status_line(pod, started(), timeline))  # type: ignore[operator]
        await asyncio.sleep(0.1)


def print_report(clients: Clients, report: TerminationReport, pod: EnvoyPod, deleted: float) -> int:
    table = Table(title="Requests by client")
    for column in ("client", "ok", "failed"):
        table.add_column(column, justify="left" if column == "client" else "right")
    failed = 0
    for name, tally in clients.tallies.items():
        failed += tally.failed
        style = "red" if tally.failed else "green"
        table.add_row(name, str(tally.ok), f"[{style}]{tally.failed}[/]")
    console.print(table)

    pod_table = Table(title="Pod termination (seconds after deletion)")
    for column in ("container", "preStop hook", "hook result", "SIGTERM", "exited", "SIGKILL"):
        pod_table.add_column(column)
    for name, entry in report.containers.items():

        def at(value: float | None) -> str:
            return "-" if value is None else f"{value - report.deleted_at:5.2f}"

        hook = f"{at(entry.hook_started)} -> {at(entry.hook_ended)}"
        pod_table.add_row(
            name,
            hook,
            entry.hook_result,
            at(entry.sigterm_at),
            at(entry.exited_at),
            at(entry.sigkill_at),
        )
    console.print(pod_table)

    outcome = pod.drain_outcome()
    console.print(
        f"Drain: [bold]{outcome.get('outcome')}[/] after {outcome.get('elapsed')}s "
        f"({outcome.get('message')}); minimum drain {MIN_DRAIN:g}s, grace period {GRACE:g}s"
    )
    console.print(f"Pod gone {report.duration:.2f}s after deletion")
    verdict = (
        "[green]zero failed requests[/]" if failed == 0 else f"[red]{failed} failed requests[/]"
    )
    console.print(f"Result: {verdict}")
    return failed


def plot(timeline: Timeline, deleted: float, gone: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 5))
    xs, ys = zip(*timeline.connections, strict=True) if timeline.connections else ((), ())
    top.step(xs, ys, where="post")
    top.set_ylabel("active connections")
    buckets: dict[int, list[int]] = {}
    for moment, ok in timeline.requests:
        slot = buckets.setdefault(int(moment * 10), [0, 0])
        slot[0 if ok else 1] += 1
    slots = sorted(buckets)
    bottom.bar([s / 10 for s in slots], [buckets[s][0] for s in slots], width=0.1, label="ok")
    bottom.bar(
        [s / 10 for s in slots],
        [buckets[s][1] for s in slots],
        width=0.1,
        label="failed",
        color="red",
    )
    bottom.set_ylabel("requests / 100 ms")
    bottom.set_xlabel("seconds")
    for axis in (top, bottom):
        axis.axvline(deleted, color="orange", linestyle="--", label="deleted")
        axis.axvline(deleted + MIN_DRAIN, color="grey", linestyle=":", label="minimum drain")
        axis.axvline(gone, color="black", linestyle="--", label="pod gone")
    bottom.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    console.print(f"Timeline written to {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description="Terminate an Envoy pod under mixed load.")
    parser.add_argument("--timeline", type=Path, help="write a PNG timeline here")
    parser.add_argument(
        "--wiring", choices=WIRINGS, default="native",
        help="the sidecar as deploy/ has it by default (native) or classic (default: native)",
    )  # fmt: skip
    parser.add_argument(
        "--routes", choices=ROUTES, default="ingress",
        help="route by an Ingress, or by a Gateway and an HTTPRoute (default: ingress)",
    )  # fmt: skip
    parser.add_argument(
        "--dashboard", type=Path,
        help="scrape the pod with a real Prometheus and draw the key dashboard panels in this"
        " PNG (default: no Prometheus)",
    )  # fmt: skip
    parser.add_argument(
        "--scenario", choices=SCENARIOS, default="all",
        help="the Envoy pod's drain, the backends' rollout, or both in turn (default: all)",
    )  # fmt: skip
    args = parser.parse_args()
    code = 0
    if args.scenario in ("all", "pod"):
        with tempfile.TemporaryDirectory(prefix="demo-", dir="/tmp") as tmp:
            run_story = story(Path(tmp), args.timeline, args.wiring, args.routes, args.dashboard)
            code |= asyncio.run(run_story)
    if args.scenario in ("all", "backends"):
        with tempfile.TemporaryDirectory(prefix="demo-", dir="/tmp") as tmp:
            code |= asyncio.run(backend_story(Path(tmp)))
    return code


SCENARIOS = ("all", "pod", "backends")


async def backend_story(workdir: Path) -> int:
    """The other half of zero failed requests: the app behind Envoy is deployed. Three pods
    of an app that shuts down gracefully (no preStop sleep) are replaced one by one, their
    EndpointSlice lagging SIGTERM by up to a second, under GETs, POSTs with unique ids,
    long streams and WebSocket sessions. Fails on any failed GET, stream or WebSocket
    handshake, or a POST executed twice."""
    console = Console()
    console.rule("[bold]A backend rollout behind Envoy")
    console.print(
        "3 pods of a graceful app replaced one by one (a new pod ready, then an old one "
        "deleted); no preStop sleep"
    )
    server, apply = from_manifests(workdir)
    outcome, metrics = await through_envoy(workdir, server, apply, "graceful", "surge")
    table = Table(title="Requests through the rollout")
    for column in ("client", "sent", "failed"):
        table.add_column(column, justify="right" if column != "client" else "left")
    for kind, label in KINDS.items():
        table.add_row(label, str(outcome.sent[kind]), str(outcome.failed[kind]))
    console.print(table)
    console.print(f"POSTs executed twice: {len(outcome.executed_twice)}")
    for line in metrics.splitlines():
        if line.startswith(
            ("xds_endpoint_programming_seconds_sum", "xds_endpoint_programming_seconds_count")
        ):
            console.print(line)
    if outcome.failed["POST"]:
        console.print(
            f"{outcome.failed['POST']} POST(s) lost to the race no retry may fix (the app "
            "closed a keep-alive connection as Envoy wrote on it: docs/xds.md, Backends)"
        )
    ok = not (outcome.failed["GET"] or outcome.failed["STREAM"] or outcome.failed["WS"])
    ok = ok and not outcome.executed_twice
    console.print("[green]no failed GET, stream or WebSocket handshake; no POST executed twice"
                  if ok else "[red]requests failed that must not")  # fmt: skip
    return 0 if ok else 1


KINDS = {
    "GET": "keep-alive GETs",
    "POST": "POSTs with unique ids",
    "STREAM": "long streaming GETs",
    "WS": "WebSocket sessions",
}


if __name__ == "__main__":
    sys.exit(main())
