"""`make demo`: a real Envoy under mixed load, terminated the kubelet's way, with a report.

The story, on this machine, in about 20 seconds:

1. An aiohttp backend, a real Envoy 1.40 (admin on a unix socket) and the sidecar
   (`shutdown-manager serve`) start; mixed clients send load: HTTP/1.1 keep-alive, HTTP/2
   multiplexed (h2load), a long streaming response, a TCP-proxy tunnel and an idle pooled
   client.
2. The pod is deleted: as the kubelet does, Envoy's preStop httpGet (`/shutdown`) and the
   sidecar's preStop exec (`shutdown-manager drain`) start in parallel.
3. Load keeps arriving for 2.5 s (endpoints and load balancers have not caught up), then
   stops; the long clients finish on their own.
4. When `/shutdown` answers, Envoy gets SIGTERM; the report shows every client's failures
   (there must be none), the drain's outcome and how long release took.

Exit status 0 only with zero failed requests.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness.backend import Backend
from tests.harness.clients import (
    LoadResult,
    Tally,
    TcpConnection,
    h2load,
    http_client,
    steady_load,
    streaming_request,
)
from tests.harness.envoy import Envoy
from tests.harness.sidecar import SidecarProcess, run_hook

LOAD_BEFORE = 2.0
"""Seconds of load before the pod is deleted."""

ENDPOINTS_LAG = 2.5
"""Seconds new requests keep arriving after deletion (kube-proxy, load balancers)."""

MIN_DRAIN = 3.0


async def tcp_user(port: int, tally: Tally, until: float) -> None:
    tunnel = await TcpConnection(port).open()
    try:
        while time.monotonic() < until:
            if await tunnel.request():
                tally.ok += 1
            else:
                tally.failed += 1
            await asyncio.sleep(0.3)
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
        tally.fail(exc)
    finally:
        await tunnel.close()


async def idle_user(url: str, tally: Tally, again_at: float) -> None:
    """One request, idle in the pool, one more mid-drain."""
    async with http_client() as client:
        for when in (0.0, again_at):
            await asyncio.sleep(max(0.0, when - time.monotonic()))
            try:
                tally.record(await client.get(url))
            except httpx.HTTPError as exc:
                tally.fail(exc)


async def progress(sidecar: SidecarProcess, done: asyncio.Event, started: float) -> None:
    """A live line on a terminal; a line per change in a log."""
    live = sys.stdout.isatty()
    last = None
    async with httpx.AsyncClient(trust_env=False, timeout=2) as client:
        while not done.is_set():
            try:
                status = (await client.get(f"{sidecar.url}/status")).json()
            except httpx.HTTPError:
                break
            event = status.get("last_event") or {}
            connections = event.get("connections")
            shown = "-" if connections is None else str(connections)
            line = (
                f"  drain: {status['phase']:<8} active connections: {shown:<4} "
                f"elapsed: {time.monotonic() - started:5.2f}s"
            )
            if live:
                print("\r" + line, end="", flush=True)
            elif (status["phase"], shown) != last:
                print(line, flush=True)
            last = (status["phase"], shown)
            await asyncio.sleep(0.1)
    if live:
        print()


async def demo(work: Path) -> int:
    backend = await Backend().start()
    envoy = Envoy(workdir=work / "envoy", backend_port=backend.port, drain_time_s=25)
    sidecar = SidecarProcess(
        work, "", "--min-drain-duration", f"{MIN_DRAIN}s", "--drain-timeout", "20s",
        "--ignore-listener", "probe",
    )  # fmt: skip
    try:
        await envoy.start()
        sidecar.args[sidecar.args.index("--admin-address") + 1] = envoy.admin_address
        await sidecar.start()
        print(f"Envoy 1.40 at {envoy.url()} with the shutdown-manager sidecar;")
        print(f"mixed load for {LOAD_BEFORE:g}s (HTTP/1.1, HTTP/2, streaming, TCP proxy, idle)")
        return await run_story(envoy, sidecar)
    finally:
        sidecar.kill()
        envoy.stop()
        await backend.stop()


async def run_story(envoy: Envoy, sidecar: SidecarProcess) -> int:
    tallies = {
        name: Tally()
        for name in ("HTTP/1.1 keep-alive x4", "streaming", "TCP proxy", "idle pooled")
    }
    stop = asyncio.Event()
    begin = time.monotonic()
    deleted_at = begin + LOAD_BEFORE
    tasks = [
        *(
            asyncio.create_task(
                steady_load(
                    envoy.url("/slow?s=0.02"), stop, tallies["HTTP/1.1 keep-alive x4"], pause=0
                )
            )
            for _ in range(4)
        ),
        asyncio.create_task(
            streaming_request(envoy.url("/stream?n=9&d=0.6"), tallies["streaming"])
        ),
        asyncio.create_task(
            tcp_user(envoy.ports["tcp_passthrough"], tallies["TCP proxy"], deleted_at + 3.5)
        ),
        asyncio.create_task(idle_user(envoy.url(), tallies["idle pooled"], deleted_at + 1.0)),
    ]
    h2 = asyncio.create_task(h2load(envoy.url(), seconds=LOAD_BEFORE + ENDPOINTS_LAG))
    await asyncio.sleep(LOAD_BEFORE)

    print("pod deleted: preStop hooks start in parallel (Envoy: GET /shutdown, sidecar: drain)")
    done = asyncio.Event()
    started = time.monotonic()
    ticker = asyncio.create_task(progress(sidecar, done, started))
    async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
        envoy_hook = asyncio.create_task(client.get(f"{sidecar.url}/shutdown"))
        sidecar_hook = asyncio.create_task(
            run_hook("--control-socket", str(sidecar.control_socket))
        )
        await asyncio.sleep(ENDPOINTS_LAG)
        stop.set()  # endpoints updated: no new requests reach this pod
        released = (await envoy_hook).json()
        released_at = time.monotonic()
    envoy.kill(15)  # the kubelet's SIGTERM once Envoy's hook returned
    hook_status, _ = await sidecar_hook
    done.set()
    await ticker
    await asyncio.gather(*tasks)
    h2_result: LoadResult = await h2
    return report(tallies, h2_result, released, released_at - started, hook_status)


def report(
    tallies: dict[str, Tally], h2: LoadResult, status: dict[str, object], took: float, hook: int
) -> int:
    rows = [(name, t.ok, t.failed) for name, t in tallies.items()]
    rows.append(("HTTP/2 multiplexed (h2load)", h2.succeeded, h2.not_ok))
    failed = sum(row[2] for row in rows)
    print()
    print(f"{'client':<30}{'ok':>8}{'failed':>8}")
    for name, ok, bad in rows:
        print(f"{name:<30}{ok:>8}{bad:>8}")
    print()
    print(f"drain outcome:   {status.get('outcome')} ({status.get('detail')})")
    print(f"Envoy released:  {took:.2f}s after deletion (minimum drain {MIN_DRAIN:g}s)")
    print(f"sidecar hook:    exit {hook}")
    print(f"failed requests: {failed}")
    return 0 if failed == 0 else 1


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="demo-", dir="/tmp") as tmp:
        return asyncio.run(demo(Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
