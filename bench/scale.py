"""Fleet-scale benchmark: one xds-server replica and a thousand proxies.

Run: `make bench-scale` (or `python bench/scale.py [--quick]`). Prints, on this machine:

1. Synthetic fleets (delta and SotW clients spread over several processes, each reporting its
   own CPU, calibrated against as long an idle run) at 10,000 routes: all synced after they
   connect at once, change -> all ACKed p50 / p99, server CPU per change, server RSS (peak,
   sampled every 20 ms over the whole run, and after).
2. 100,000 routes: cold start to the first snapshot, change -> served by a real Envoy, RSS.
3. A replica restart with the fleet connected (all re-synced, resources re-sent), and two
   replicas over the same input (versions equal; proxies that move are sent nothing).
4. A stuck client (never reads) beside the fleet: dropped, the others unaffected.

The anchors' published figures are printed beside ours (docs/xds.md has the table).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from bench.lab.ads_client import SyntheticProxy  # noqa: E402
from bench.lab.backend import Backend  # noqa: E402
from bench.lab.envoy import free_port  # noqa: E402
from bench.lab.xds import XdsEnvoy, XdsServer  # noqa: E402
from bench.xds import _until as until_served  # noqa: E402
from bench.xds import host_of, pct, prepared, route_files, write_all  # noqa: E402

ROUTES = 10_000
WORKERS = 4
"""Client processes: a thousand Python clients in one would be one core's worth of them."""
SPACING = 1.0
"""Seconds between two changes: each change is measured on its own."""


class Sampler:
    """A process's peak RSS, sampled every 20 ms in a thread (the event loop may be busy)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self.process.memory_info().rss)

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def cpu(self) -> float:
        return float(sum(self.process.cpu_times()[:2]))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Fleet:
    """Client processes of bench/lab/fleet.py, driven line by line."""

    address: str
    count: int
    flavour: str
    prefix: str = "fleet"
    extra: list[str] = field(default_factory=list)
    """More flags for bench/lab/fleet.py (--reconnect, --addresses)."""
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    started: float = 0.0

    def start(self) -> Fleet:
        self.started = time.monotonic()
        workers = min(WORKERS, self.count)
        for n in range(workers):
            share = self.count // workers + (1 if n < self.count % workers else 0)
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bench.lab.fleet",
                        "--address",
                        self.address,
                        "--count",
                        str(share),
                        "--flavour",
                        self.flavour,
                        "--prefix",
                        f"{self.prefix}{n}",
                        *self.extra,
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    cwd=_HERE.parent,
                )
            )
        return self

    async def ask(self, do: str, timeout: float = 60) -> list[dict[str, Any]]:
        line = json.dumps({"do": do, "timeout": timeout}) + "\n"
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(line)
            proc.stdin.flush()
        return await asyncio.gather(*(asyncio.to_thread(_answer, p) for p in self.procs))

    async def joined(self, key: str, do: str, timeout: float = 60) -> tuple[list[float], int]:
        answers = await self.ask(do, timeout)
        return [t for a in answers for t in a[key]], sum(a["missing"] for a in answers)

    async def cpu(self) -> float:
        return float(sum(a["cpu"] for a in await self.ask("cpu")))

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError, ValueError):
                assert proc.stdin is not None
                proc.stdin.write(json.dumps({"do": "quit"}) + "\n")
                proc.stdin.flush()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _answer(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError("a fleet process ended")
    answer: dict[str, Any] = json.loads(line)
    return answer


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


async def fleet_row(work: Path, proxies: int, flavour: str, runs: int) -> dict[str, str]:
    """`proxies` clients connect at once to a server of ROUTES routes; then `runs` changes."""
    manifests = work / f"{flavour}-{proxies}"
    manifests.mkdir(parents=True)
    # The last route goes to b from the start: each change then moves one route between two
    # clusters every proxy has (a route to a new cluster takes three round trips: its cluster,
    # its endpoints, then the route: make before break).
    write_all(manifests, route_files(ROUTES, ROUTES - 1, {"a": 9000, "b": 9001}))
    server = await XdsServer(work, manifests).start(timeout=120)
    assert server.proc is not None
    sampler = Sampler(server.proc.pid)
    idle_rss = sampler.rss()
    fleet = Fleet(f"127.0.0.1:{server.grpc_port}", proxies, flavour).start()
    try:
        answers = await fleet.ask("synced", timeout=max(120, proxies / 6))
        synced = [t for a in answers for t in a["synced"]]
        missing = sum(a["missing"] for a in answers)
        retries = sum(a.get("retries", 0) for a in answers)
        if missing:
            dropped = server.log().count("dropping the stream")
            raise RuntimeError(f"{missing} of {proxies} proxies never synced ({dropped} dropped)")
        sync_time = max(synced) - fleet.started
        sync_peak = sampler.peak
        await asyncio.sleep(SPACING)
        client_idle = await _idle_client_cpu(fleet, runs)
        server_cpu, client_cpu, samples = sampler.cpu(), await fleet.cpu(), []
        for run in range(runs):
            await fleet.ask("mark")
            ready, final = prepared(manifests, ROUTES, (run * 7919 + 11) % ROUTES)
            await asyncio.sleep(SPACING)
            changed = time.monotonic()
            ready.rename(final)
            arrivals, missing = await fleet.joined("arrivals", "changed", timeout=60)
            if missing:
                raise RuntimeError(f"{missing} of {proxies} proxies never got change {run}")
            samples.append(max(arrivals) - changed)
        print(
            f"  {proxies} {flavour}: change -> all ACKed, each run (ms):",
            " ".join(f"{t * 1000:.0f}" for t in samples),
            file=sys.stderr,
            flush=True,
        )
        server_cpu = (sampler.cpu() - server_cpu) / runs
        client_cpu = (await fleet.cpu() - client_cpu) / runs
    finally:
        fleet.stop()
        sampler.stop()
        after = sampler.rss() if server.proc.poll() is None else 0
        server.stop()
    return {
        "proxies": f"{proxies:,} {flavour}",
        "all synced after connecting": f"{sync_time:.1f} s"
        + (f" ({retries} connections retried)" if retries else ""),
        "change -> all ACKed p50 / p99": f"{_ms(statistics.median(samples))} / "
        f"{_ms(pct(samples, 0.99))}",
        "server CPU per change": _ms(server_cpu),
        "clients' CPU per change (idle)": f"{_ms(client_cpu)} ({_ms(client_idle)})",
        "server RSS idle / peak syncing / peak / after": f"{idle_rss / 2**20:.0f} / "
        f"{sync_peak / 2**20:.0f} / {sampler.peak / 2**20:.0f} / {after / 2**20:.0f} MiB",
    }


async def _idle_client_cpu(fleet: Fleet, runs: int) -> float:
    """The clients' CPU over as long as the changes take, without changes: their floor."""
    before = await fleet.cpu()
    await asyncio.sleep(SPACING * runs)
    return (await fleet.cpu() - before) / runs


async def _metric(server: XdsServer, name: str) -> float:
    """A metric's value (summed over its labels) from the server's /metrics."""
    total = 0.0
    for line in (await server.metrics()).splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _in_step(server: XdsServer, proxies: int, timeout: float) -> float:
    """Seconds until `proxies` streams are open on `server` and none is behind."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with contextlib.suppress(Exception):
            connected = await _metric(server, "xds_connected_proxies")
            if connected >= proxies and await _metric(server, "xds_proxies_behind") == 0:
                return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{proxies} proxies not in step on {server.grpc_port} in {timeout} s")


def _again(server: XdsServer) -> XdsServer:
    """The same server (ports, flags) to start anew: a restarted replica."""
    twin = copy.copy(server)
    twin.proc = None
    return twin


def _replica(server: XdsServer) -> XdsServer:
    """Another replica of `server`: the same flags (Envoy's ports among them: they are in the
    listeners), its own gRPC and HTTP ports."""
    twin = _again(server)
    twin.grpc_port, twin.http_port = free_port(), free_port()
    args = list(server.args)
    args[args.index("--listen") + 1] = f"127.0.0.1:{twin.grpc_port}"
    args[args.index("--http-listen") + 1] = f"127.0.0.1:{twin.http_port}"
    twin.args = args
    twin.log_path = server.log_path.with_name(f"xds-{twin.grpc_port}.log")
    return twin


async def restart_row(work: Path, proxies: int) -> dict[str, str]:
    """A replica restarted (SIGTERM, then started again) with the fleet connected: the
    proxies reconnect saying what they have; time to all in step, and what was re-sent."""
    manifests = work / f"restart-{proxies}"
    manifests.mkdir(parents=True)
    write_all(manifests, route_files(ROUTES, ROUTES - 1, {"a": 9000, "b": 9001}))
    server = await XdsServer(work, manifests).start(timeout=120)
    address = f"127.0.0.1:{server.grpc_port}"
    fleet = Fleet(address, proxies, "delta", prefix="restart", extra=["--reconnect"]).start()
    again = _again(server)
    try:
        _, missing = await fleet.joined("synced", "synced", timeout=max(120, proxies / 6))
        assert not missing, f"{missing} proxies never synced"
        await _in_step(server, proxies, 60)
        server.stop()
        started = time.monotonic()
        await again.start(timeout=120)
        ready = time.monotonic() - started
        await _in_step(again, proxies, 120)
        resynced = time.monotonic() - started
        vhosts = await _metric(again, 'xds_resources_sent_total{type="VirtualHost"}')
        versions = {v for a in await fleet.ask("versions") for v in a["versions"]}
    finally:
        fleet.stop()
        server.stop()
        again.stop()
    return {
        "scenario": f"restart, {proxies:,} delta proxies",
        "result": f"new process -> first snapshot {ready:.1f} s, -> all in step {resynced:.1f} s; "
        f"virtual hosts re-sent: {vhosts:.0f}; routes versions held: {len(versions)}",
    }


async def replicas_row(work: Path, proxies: int) -> dict[str, str]:
    """Two replicas over the same input: versions compared; then one stops and its proxies
    move to the other, saying what they have."""
    manifests = work / f"replicas-{proxies}"
    manifests.mkdir(parents=True)
    write_all(manifests, route_files(ROUTES, ROUTES - 1, {"a": 9000, "b": 9001}))
    first = await XdsServer(work, manifests).start(timeout=120)
    second = await _replica(first).start(timeout=120)
    addresses = f"127.0.0.1:{first.grpc_port},127.0.0.1:{second.grpc_port}"
    fleet = Fleet(
        addresses.split(",")[0],
        proxies,
        "delta",
        prefix="moving",
        extra=["--reconnect", "--addresses", addresses],
    ).start()
    try:
        _, missing = await fleet.joined("synced", "synced", timeout=max(120, proxies / 6))
        assert not missing, f"{missing} proxies never synced"
        versions = [(await s.status())["versions"] for s in (first, second)]
        held = {v for a in await fleet.ask("versions") for v in a["versions"]}
        on_second = await _metric(second, "xds_connected_proxies")
        before = await _metric(second, 'xds_resources_sent_total{type="VirtualHost"}')
        first.stop()
        started = time.monotonic()
        await _in_step(second, proxies, 120)
        moved = time.monotonic() - started
        after = await _metric(second, 'xds_resources_sent_total{type="VirtualHost"}')
    finally:
        fleet.stop()
        first.stop()
        second.stop()
    equal = "equal" if versions[0] == versions[1] else f"DIFFERENT: {versions}"
    return {
        "scenario": f"two replicas, {proxies:,} delta proxies over both",
        "result": f"versions of every type {equal}; routes versions held: {len(held)}; "
        f"one stopped: its {proxies - on_second:.0f} proxies in step on the other "
        f"{moved:.1f} s later, virtual hosts sent them: {after - before:.0f}",
    }


async def stuck_row(work: Path, proxies: int, runs: int) -> dict[str, str]:
    """A client that never reads beside a fleet: the others' changes, and the stuck one
    dropped (`--stuck-stream-timeout 5s`)."""
    manifests = work / f"stuck-{proxies}"
    manifests.mkdir(parents=True)
    write_all(manifests, route_files(ROUTES, ROUTES - 1, {"a": 9000, "b": 9001}))
    server = await XdsServer(work, manifests, "--stuck-stream-timeout", "5s").start(timeout=120)
    assert server.proc is not None
    sampler = Sampler(server.proc.pid)
    address = f"127.0.0.1:{server.grpc_port}"
    stuck = await SyntheticProxy(address, "stuck", stuck=True).start()
    fleet = Fleet(address, proxies, "delta", prefix="beside").start()
    samples = []
    try:
        _, missing = await fleet.joined("synced", "synced", timeout=120)
        assert not missing, f"{missing} proxies never synced"
        for run in range(runs):
            await fleet.ask("mark")
            ready, final = prepared(manifests, ROUTES, (run * 7919 + 11) % ROUTES)
            await asyncio.sleep(SPACING)
            changed = time.monotonic()
            ready.rename(final)
            arrivals, missing = await fleet.joined("arrivals", "changed", timeout=60)
            assert not missing, f"{missing} proxies never got change {run}"
            samples.append(max(arrivals) - changed)
        deadline = time.monotonic() + 30
        while "dropping the stream of stuck" not in server.log():
            assert time.monotonic() < deadline, "the stuck stream was never dropped"
            await asyncio.sleep(0.2)
    finally:
        await stuck.stop()
        fleet.stop()
        sampler.stop()
        server.stop()
    return {
        "scenario": f"a client that never reads, beside {proxies:,} delta proxies",
        "result": f"dropped with a log line after 5 s; the others' change -> all ACKed "
        f"{_ms(statistics.median(samples))} / {_ms(pct(samples, 0.99))}; "
        f"server peak RSS {sampler.peak / 2**20:.0f} MiB",
    }


async def big_row(work: Path, routes: int, runs: int) -> dict[str, str]:
    """`routes` routes (Ingresses of 10 paths, one file each) served by a real Envoy: the
    server's cold start to its first snapshot, one change -> the Envoy serves it, RSS."""
    backends = {name: await Backend(name).start() for name in "ab"}
    manifests = work / f"big-{routes}"
    manifests.mkdir(parents=True)
    write_all(manifests, route_files(routes, None, {n: b.port for n, b in backends.items()}))
    server = XdsServer(work, manifests)
    envoy = XdsEnvoy(work, server, f"big-{routes}")
    started = time.monotonic()
    await server.start(timeout=300)
    cold = time.monotonic() - started
    assert server.proc is not None
    sampler = Sampler(server.proc.pid)
    samples = []
    try:
        await envoy.start()
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            await until_served(client, envoy.url("/r0"), host_of(0), "a", timeout=120)
            for run in range(runs):
                target = (run * 7919 + 13) % routes
                ready, final = prepared(manifests, routes, target)
                await asyncio.sleep(SPACING)
                changed = time.monotonic()
                ready.rename(final)
                await until_served(client, envoy.url(f"/r{target}"), host_of(target), "b")
                samples.append(time.monotonic() - changed)
    finally:
        envoy.stop()
        sampler.stop()
        server.stop()
        for backend in backends.values():
            await backend.stop()
    return {
        "routes": f"{routes:,}",
        "cold start -> first snapshot": f"{cold:.1f} s",
        "change -> served by Envoy p50 / p99": f"{_ms(statistics.median(samples))} / "
        f"{_ms(pct(samples, 0.99))}",
        "server peak RSS": f"{sampler.peak / 2**20:.0f} MiB",
    }


async def _grpc_floor(proxies: int) -> float:
    command = [sys.executable, "-m", "bench.lab.grpc_floor", "--proxies", str(proxies)]
    done = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, cwd=_HERE.parent, check=True
    )
    return float(json.loads(done.stdout)["server_cpu_per_round"])


def table(rows: list[dict[str, str]]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row.get(k, "") for k in head) + " |" for row in rows]
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        root = Path(tmp)
        rows = []
        for proxies, flavour in args.fleets:
            rows.append(await fleet_row(root, proxies, flavour, args.runs))
            print(table(rows[-1:]), flush=True)
        floor = await _grpc_floor(1000)
        print("\n### Fleets at 10,000 routes\n")
        print(table(rows))
        print(
            f"\nThe floor, grpc.aio doing no xDS work (bench/lab/grpc_floor.py): {_ms(floor)} "
            "of server CPU per round of one message out and one answer in, 1,000 streams."
        )
        if args.fleets_only:
            return
        if args.big:
            big = [await big_row(root, args.big, args.runs)]
            print(f"\n### {args.big:,} routes, one real Envoy (delta ADS, VHDS)\n")
            print(table(big), flush=True)
        others = [
            await restart_row(root, args.moving),
            await replicas_row(root, args.moving),
            await stuck_row(root, 100, args.runs),
        ]
        print("\n### Restart, replicas, a stuck client (10,000 routes)\n")
        print(table(others))


def _fleets(text: str) -> list[tuple[int, str]]:
    out = []
    for item in text.split(","):
        count, _, flavour = item.partition(":")
        out.append((int(count), flavour or "delta"))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--fleets",
        type=_fleets,
        default=_fleets("100:delta,1000:delta,2000:delta,1000:sotw"),
        help="COUNT:FLAVOUR,... (default 100:delta,1000:delta,2000:delta,1000:sotw)",
    )
    parser.add_argument("--runs", type=int, default=10, help="changes per fleet (default 10)")
    parser.add_argument(
        "--moving", type=int, default=1000, help="proxies in the restart and replica rows"
    )
    parser.add_argument(
        "--fleets-only", action="store_true", help="the fleet table alone (default: all)"
    )
    parser.add_argument(
        "--big",
        type=int,
        default=100_000,
        help="routes of the real-Envoy row (default 100000; 0 skips it)",
    )
    asyncio.run(main(parser.parse_args()))
