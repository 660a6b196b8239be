"""Drain benchmark: release latency and admin load, ours against the anchors, on real Envoy.

Run: `make bench` (or `python bench/drain.py [--quick]`). Prints markdown tables:

1. Release latency: from the moment the release condition holds (the last connection
   closed, and the minimum drain passed where a policy has one) to the release (for us: the
   sidecar's `/shutdown` answering, which is when the kubelet sends Envoy SIGTERM; for the
   anchors: their poll loop returning). Same Envoy build, same clients, same run.
2. Correctness: a TCP-proxy connection still open: who releases (and so cuts it)?
3. Footprint of the sidecar process: idle RSS, peak RSS and CPU over a drain.
4. The drain-method matrix on Envoy 1.40: trigger x idle client kind -> time until Envoy
   closes the connection, plus failed requests of a busy client under each trigger.
5. A pod deleted behind a load balancer that cuts flows on health failure, without and with
   --health-check-failure-delay: requests failed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.anchors import contour, envoy_gateway
from bench.lab.backend import Backend
from bench.lab.clients import Tally, TcpConnection, steady_load, streaming_request
from bench.lab.envoy import Envoy
from bench.lab.lb_cut import pod_behind_cutting_lb
from bench.lab.sidecar import COMMAND, GATEWAY, SidecarProcess, run_hook
from bench.scenario_table import scenario_rows
from shutdown_manager.address import parse_admin_address
from shutdown_manager.admin import AdminClient
from shutdown_manager.stats import ListenerFilter

MIN_DRAIN = 1.0
"""Minimum drain given to every policy that has one, so the comparison is like for like."""

MATRIX_CAP = 8.0
"""Seconds to wait in a matrix cell before writing `> cap`."""

IGNORE = ListenerFilter(("probe",))


@dataclass
class Sample:
    latency: float | None  # None: released while a connection was still open (cut)
    admin_rate: float | None = None


async def with_envoy(work: Path, body: Callable[[Envoy], Awaitable[Sample]]) -> Sample:
    backend = await Backend().start()
    envoy = Envoy(workdir=work, backend_port=backend.port)
    try:
        await envoy.start()
        return await body(envoy)
    finally:
        envoy.stop()
        await backend.stop()


async def ours(
    envoy: Envoy, work: Path, dropin: bool = False
) -> tuple[Callable[[], Awaitable[float]], SidecarProcess]:
    """Start the real sidecar; return a trigger that runs the hook and returns release time.

    Release is when `/shutdown` answers: the moment the kubelet would send Envoy SIGTERM.
    `dropin`: the sidecar and hook as Envoy Gateway runs them (our `envoy-gateway` command,
    their flags; /shutdown/ready), our own flags only to name this Envoy's admin socket.
    """
    if dropin:
        sidecar = SidecarProcess(work, envoy.admin_address, "--ready-file", str(work / "ready"),
                                 command=(*GATEWAY, "shutdown-manager"))  # fmt: skip
        hook_command: tuple[str, ...] = (*GATEWAY, "shutdown")
        flags = [f"--min-drain-duration={MIN_DRAIN:g}s", "--drain-timeout=20s", "--ready-file",
                 str(work / "ready"), "--admin-address", envoy.admin_address]  # fmt: skip
        path = "/shutdown/ready"
    else:
        sidecar = SidecarProcess(
            work, envoy.admin_address, "--min-drain-duration", f"{MIN_DRAIN}s",
            "--drain-timeout", "20s", "--ignore-listener", "probe", "--quiet-period", "0",
        )  # fmt: skip
        hook_command, flags, path = (*COMMAND, "drain"), [], "/shutdown"
    await sidecar.start()

    async def trigger() -> float:
        async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
            waiter = asyncio.create_task(client.get(f"{sidecar.url}{path}"))
            await asyncio.sleep(0.05)
            hook = asyncio.create_task(run_hook(
                "--control-socket", str(sidecar.control_socket), *flags, command=hook_command
            ))  # fmt: skip
            await waiter
            released = time.monotonic()
            await hook
        return released

    return trigger, sidecar


async def release_after_stream(policy: str, work: Path) -> Sample:
    """A streaming response ends at a random moment after the minimum drain."""

    async def body(envoy: Envoy) -> Sample:
        chunks = 4
        interval = (MIN_DRAIN + random.uniform(0.2, 1.5)) / chunks
        tally = Tally()
        stream = asyncio.create_task(
            streaming_request(envoy.url(f"/stream?n={chunks}&d={interval:.3f}"), tally)
        )
        await asyncio.sleep(0.1)
        started = time.monotonic()
        sidecar = None
        async with AdminClient(parse_admin_address(envoy.admin_address)) as admin:
            if policy in ("ours", "dropin"):
                trigger, sidecar = await ours(envoy, work, dropin=policy == "dropin")
                released = await trigger()
                started = await drain_started(sidecar)
            elif policy == "contour":
                released = await contour(admin)
            else:
                released = await envoy_gateway(admin, MIN_DRAIN, 20.0, IGNORE)
            requests = admin.requests
        closed = await stream
        if sidecar is not None:
            requests = await sidecar_admin_requests(sidecar)
            sidecar.kill()
        if released < closed:
            return Sample(latency=None)
        condition = max(closed, started + MIN_DRAIN) if policy != "contour" else closed
        return Sample(latency=released - condition, admin_rate=requests / (released - started))

    return await with_envoy(work, body)


async def release_with_tcp(policy: str, work: Path) -> Sample:
    """A TCP-proxy connection in use for ~2.5 s: releasing before it closes cuts it."""

    async def body(envoy: Envoy) -> Sample:
        tunnel = await TcpConnection(envoy.ports["tcp_passthrough"]).open()
        closed_at: list[float] = []

        async def use_then_close() -> None:
            for _ in range(5):
                await tunnel.request()
                await asyncio.sleep(0.5)
            await tunnel.close()
            closed_at.append(time.monotonic())

        user = asyncio.create_task(use_then_close())
        sidecar = None
        async with AdminClient(parse_admin_address(envoy.admin_address)) as admin:
            if policy in ("ours", "dropin"):
                trigger, sidecar = await ours(envoy, work, dropin=policy == "dropin")
                released = await trigger()
            elif policy == "contour":
                released = await contour(admin)
            else:
                released = await envoy_gateway(admin, MIN_DRAIN, 20.0, IGNORE)
        await user
        if sidecar is not None:
            sidecar.kill()
        return Sample(latency=None if released < closed_at[0] else released - closed_at[0])

    return await with_envoy(work, body)


async def drain_started(sidecar: SidecarProcess) -> float:
    """The sidecar's own drain start (wall clock), on this process's monotonic clock."""
    async with httpx.AsyncClient(trust_env=False) as client:
        status = (await client.get(f"{sidecar.url}/status")).json()
    return float(status["started_at"]) - (time.time() - time.monotonic())


async def sidecar_admin_requests(sidecar: SidecarProcess) -> int:
    async with httpx.AsyncClient(trust_env=False) as client:
        status = (await client.get(f"{sidecar.url}/status")).json()
    return int(status["last_event"]["admin_requests"])


def summarize(samples: list[Sample]) -> str:
    values = sorted(s.latency for s in samples if s.latency is not None)
    cut = sum(1 for s in samples if s.latency is None)
    if not values:
        return f"cut {cut}/{len(samples)}"
    p50 = statistics.median(values) * 1000
    worst = values[-1] * 1000
    text = f"{p50:.0f} ms / {worst:.0f} ms"
    return text + (f" (cut {cut}/{len(samples)})" if cut else "")


async def footprint(work: Path) -> dict[str, str]:
    """Idle RSS of `serve`, then its peak RSS and CPU time over one drain."""

    async def body(envoy: Envoy) -> Sample:
        trigger, sidecar = await ours(envoy, work)
        assert sidecar.proc is not None
        process = psutil.Process(sidecar.proc.pid)
        await asyncio.sleep(2.0)
        idle = process.memory_info().rss
        cpu_before = sum(process.cpu_times()[:2])
        await trigger()
        cpu = sum(process.cpu_times()[:2]) - cpu_before
        peak = _peak_rss(sidecar.proc.pid)
        sidecar.kill()
        result["idle RSS"] = f"{idle / 2**20:.1f} MiB"
        result["peak RSS"] = f"{peak / 2**20:.1f} MiB"
        result["CPU over a 1 s drain"] = f"{cpu * 1000:.0f} ms"
        return Sample(latency=0)

    result: dict[str, str] = {}
    await with_envoy(work, body)
    return result


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


# -- drain-method matrix -------------------------------------------------------------------


async def idle_h1(port: int) -> asyncio.StreamReader:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    _keep.append(writer)
    return reader


async def idle_h2(port: int) -> asyncio.StreamReader:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    headers = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")]
    conn.send_headers(stream, headers, end_stream=True)
    writer.write(conn.data_to_send())
    ended = False
    while not ended:
        data = await reader.read(65536)
        for event in conn.receive_data(data):
            ended = ended or isinstance(event, h2.events.StreamEnded)
        writer.write(conn.data_to_send())
    _keep.append(writer)
    return reader


async def idle_tcp(port: int) -> asyncio.StreamReader:
    tunnel = await TcpConnection(port).open()
    await tunnel.request()
    assert tunnel.reader is not None
    assert tunnel.writer is not None
    _keep.append(tunnel.writer)
    return tunnel.reader


_keep: list[asyncio.StreamWriter] = []


async def closed_after(reader: asyncio.StreamReader, start: float) -> float | None:
    """Seconds until Envoy closes the connection (EOF), or None past the cap."""
    try:
        async with asyncio.timeout(MATRIX_CAP):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return time.monotonic() - start


TRIGGERS: dict[str, list[str]] = {
    "healthcheck/fail": ["/healthcheck/fail"],
    "drain_listeners graceful": ["/drain_listeners?graceful&skip_exit"],
    "both": ["/healthcheck/fail", "/drain_listeners?graceful&skip_exit"],
}


async def matrix_row(trigger: str, work: Path) -> list[str]:
    backend = await Backend().start()
    envoy = Envoy(workdir=work, backend_port=backend.port, drain_time_s=5)
    try:
        await envoy.start()
        readers = [
            await idle_h1(envoy.ports["ingress_http"]),
            await idle_h2(envoy.ports["ingress_http"]),
            await idle_tcp(envoy.ports["tcp_passthrough"]),
        ]
        stop, tally = asyncio.Event(), Tally()
        busy = asyncio.create_task(steady_load(envoy.url("/slow?s=0.05"), stop, tally, pause=0))
        await asyncio.sleep(0.3)
        start = time.monotonic()
        async with envoy.admin_http() as admin:
            for path in TRIGGERS[trigger]:
                await admin.post(path)
        times = await asyncio.gather(*(closed_after(r, start) for r in readers))
        stop.set()
        await busy
        cells = [f"{t:.2f} s" if t is not None else f"> {MATRIX_CAP:g} s" for t in times]
        return [trigger, *cells, f"{tally.failed} of {tally.ok + tally.failed}"]
    finally:
        for writer in _keep:
            writer.close()
        _keep.clear()
        envoy.stop()
        await backend.stop()


# -- report ------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


async def main(runs: int, sections: set[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-", dir="/tmp") as tmp:
        root = Path(tmp)
        counter = iter(range(10_000))

        def work() -> Path:
            return root / str(next(counter))

        if "latency" in sections:
            await latency_section(runs, work)
        if "scenarios" in sections:
            header, rows = await scenario_rows(work)
            print("\n### Pod termination by scenario, ours against the anchors' policies\n")
            print(table(header, rows))
        if "matrix" in sections:
            print("\n### Drain-method matrix (Envoy 1.40, --drain-strategy immediate, drain 5 s)\n")
            matrix = [await matrix_row(trigger, work()) for trigger in TRIGGERS]
            print(
                table(
                    [
                        "trigger",
                        "idle HTTP/1.1 closed after",
                        "idle HTTP/2 closed after",
                        "idle TCP proxy closed after",
                        "busy client failures",
                    ],
                    matrix,
                )
            )
        if "lb" in sections:
            await lb_section(runs, work)


LB_DELAYS = (0.0, 1.0)


async def lb_section(runs: int, work: Callable[[], Path]) -> None:
    """One of two pods deleted under load behind a balancer that cuts flows on health
    failure (bench/lab/lb_cut.py), without and with --health-check-failure-delay."""
    rows = []
    for delay in LB_DELAYS:
        results = [await pod_behind_cutting_lb(work(), delay) for _ in range(runs)]
        failed = [r.failed for r in results]
        gone = sorted(r.pod_gone_after for r in results)
        rows.append(
            [
                f"{delay:g} s" if delay else "0 (fail the health check at once)",
                f"{sum(r.ok for r in results):,}",
                f"{sum(failed)} ({min(failed)}-{max(failed)} per drain)",
                f"{gone[len(gone) // 2]:.2f} s",
            ]
        )
    print(
        "\n### Behind a load balancer that cuts flows on health failure "
        f"(HAProxy TCP, shutdown-sessions; {runs} drains each)\n"
    )
    print(
        table(
            ["--health-check-failure-delay", "requests ok", "requests failed", "pod gone p50"],
            rows,
        )
    )


async def latency_section(runs: int, work: Callable[[], Path]) -> None:
    """Release latency of one streaming client, repeated; then the sidecar's footprint."""
    rows: list[list[str]] = []
    for policy, label in (
        ("ours", "envoy-lifecycle (kernel wake-up, 4 Hz admin)"),
        ("dropin", "envoy-lifecycle as Envoy Gateway's image (their flags)"),
        ("envoy_gateway", "Envoy Gateway policy (1 s, listeners)"),
        ("contour", "Contour policy (5 s, HTTP managers only)"),
    ):
        stream = [await release_after_stream(policy, work()) for _ in range(runs)]
        tcp = [await release_with_tcp(policy, work()) for _ in range(max(1, runs // 3))]
        rates = [s.admin_rate for s in stream if s.admin_rate is not None]
        rows.append(
            [
                label,
                summarize(stream),
                summarize(tcp),
                f"{max(rates):.1f}/s" if rates else "-",
            ]
        )
    ours_p50 = _p50(rows[0][1])
    for row in rows:
        p50 = _p50(row[1])
        row.append(f"{p50 / ours_p50:.0f}x" if ours_p50 and p50 else "-")
    print("### Release latency (condition met -> release), p50 / worst\n")
    print(
        table(
            [
                "policy",
                f"stream ends ({runs} runs)",
                "TCP-proxy connection",
                "admin req/s (max)",
                "p50 vs ours",
            ],
            rows,
        )
    )
    print("\n### Sidecar footprint (`shutdown-manager serve`)\n")
    stats = await footprint(work())
    print(table(list(stats), [list(stats.values())]))


def _p50(cell: str) -> float:
    try:
        return float(cell.split(" ms")[0])
    except ValueError:
        return 0.0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10, help="drains per policy (default 10)")
    parser.add_argument("--quick", action="store_true", help="3 runs per policy")
    parser.add_argument(
        "--only",
        choices=["latency", "scenarios", "matrix", "lb"],
        action="append",
        help="run only these sections (repeatable; default: all)",
    )
    args = parser.parse_args()
    sections = set(args.only or ["latency", "scenarios", "matrix", "lb"])
    asyncio.run(main(3 if args.quick else args.runs, sections))
