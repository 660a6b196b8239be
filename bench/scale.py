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

import psutil

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from bench.lab.xds import XdsServer  # noqa: E402
from bench.xds import pct, prepared, route_files, write_all  # noqa: E402

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
        synced, missing = await fleet.joined("synced", "synced", timeout=max(120, proxies / 6))
        if missing:
            raise RuntimeError(f"{missing} of {proxies} proxies never synced")
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
        "all synced after connecting": f"{sync_time:.1f} s",
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
        print("\n### Fleets at 10,000 routes\n")
        print(table(rows))


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
    asyncio.run(main(parser.parse_args()))
