"""xDS benchmark: how fast one changed route reaches Envoy, and what it costs.

Run: `make bench-xds` (or `python bench/xds.py [--quick] [--churn SECONDS]`). Prints:

1. Change -> first successful request through a real Envoy (delta ADS, virtual hosts over
   VHDS), p50/p99, for 100, 1,000 and 10,000 routes (Ingresses of 10 paths and one host
   each, one file each): one route's backend is changed in its file (an atomic rename, as a
   deploy tool writes), and a client polls that path until the new backend answers.
   Includes the server's own change detection (inotify). The same with HTTPRoutes (10
   rules and one hostname each, on one Gateway): one rule's backend changed.
2. Change -> all ACKed, for 100 synthetic delta proxies on the same server.
3. Bytes one change costs a proxy, SotW against delta, through the server's real stream code.
4. Server CPU and peak RSS over the run, and RSS before and after `--churn` seconds of
   continuous changes (it must not grow).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import httpx
import psutil

# This file's name shadows the `xds` package the Envoy protos import: drop its directory.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from envoy.service.discovery.v3 import discovery_pb2

from bench.lab.ads_client import SyntheticProxy
from bench.lab.backend import Backend
from bench.lab.envoy import free_port
from bench.lab.xds import (
    XdsEnvoy,
    XdsServer,
    endpoint_slice,
    gateway_objects,
    ingress,
    rule,
    service,
    write_manifests,
)
from xds_server.metrics import XdsMetrics
from xds_server.model import state as model
from xds_server.sources.objects import parse_documents
from xds_server.translate.listeners import EnvoyPorts
from xds_server.translate.resources import resources
from xds_server.translate.type_urls import CLUSTER, ENDPOINT, LISTENER, ROUTE, VHOST
from xds_server.xds.cache import Snapshot
from xds_server.xds.order import PUSH_ORDER
from xds_server.xds.streams import DeltaStream, SotwStream

PER_INGRESS = 10
"""Routes per Ingress (one host each): 10,000 routes are 1,000 Ingress objects in 1,000
files, as a cluster's many teams write them, not one file nobody would maintain."""


Kind = Literal["ingress", "httproute"]
GROUP = "gateway.networking.k8s.io"


def route_files(
    count: int,
    flipped: int | None,
    ports: dict[str, int],
    services: int = 0,
    kind: Kind = "ingress",
    gateway_port: int = 0,
) -> dict[str, list[dict[str, Any]]]:
    """Manifests by file name: the backends, then `count` routes to backend a over
    Ingresses (or HTTPRoutes on one Gateway at `gateway_port`) of PER_INGRESS paths and one
    host each; route `flipped` (if any) goes to b. With `services`, the routes spread over
    that many more services (fake endpoints)."""
    backends: list[dict[str, Any]] = []
    for name in "ab":
        backends += [
            service(name, [("http", 80)]),
            endpoint_slice(name, "http", ports[name], ["127.0.0.1"]),
        ]
    extra = [f"s{n}" for n in range(services)]
    for name in extra:
        backends += [
            service(name, [("http", 80)]),
            endpoint_slice(name, "http", 9100, ["10.1.0.1"]),
        ]
    files = {"backends": backends}
    if kind == "httproute":
        files["gateway"] = gateway_objects(gateway_port)
    for index in range((count + PER_INGRESS - 1) // PER_INGRESS):
        files[f"ing{index}"] = [_routes(kind, index, count, flipped, extra)]
    return files


def _routes(
    kind: Kind, index: int, count: int, flipped: int | None, extra: list[str]
) -> dict[str, Any]:
    if kind == "ingress":
        return _ingress(index, count, flipped, extra)
    rules = []
    for n in range(index * PER_INGRESS, min(count, (index + 1) * PER_INGRESS)):
        target = "b" if n == flipped else (extra[n % len(extra)] if extra else "a")
        rules.append(
            {
                "matches": [{"path": {"type": "PathPrefix", "value": f"/r{n}"}}],
                "backendRefs": [{"name": target, "port": 80}],
            }
        )
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": f"r{index}", "namespace": "default"},
        "spec": {
            "parentRefs": [{"name": "edge"}],
            "hostnames": [host_of(index * PER_INGRESS)],
            "rules": rules,
        },
    }


def _ingress(index: int, count: int, flipped: int | None, extra: list[str]) -> dict[str, Any]:
    paths = []
    for n in range(index * PER_INGRESS, min(count, (index + 1) * PER_INGRESS)):
        target = "b" if n == flipped else (extra[n % len(extra)] if extra else "a")
        paths.append((f"/r{n}", "Prefix", target, 80))
    return ingress(f"i{index}", [rule(f"h{index}.example.com", *paths)])


POLL = 0.001
"""Seconds between two requests asking Envoy whether it serves the change yet: the
resolution of Envoy's share."""

SPLIT_RUNS = 200
"""Changes timed per size in the split (cheap: enough for a p99 that is not just the max)."""

SPACING = 0.1
"""Seconds between measured changes: each is a single change, not part of a burst (a burst
is coalesced by the server's 25 ms debounce, which would be measured instead)."""


def host_of(route: int) -> str:
    return f"h{route // PER_INGRESS}.example.com"


def write_all(manifests: Path, files: dict[str, list[dict[str, Any]]]) -> None:
    for name, objects in files.items():
        write_manifests(manifests, name, objects)


def prepared(
    manifests: Path, count: int, flipped: int, kind: Kind = "ingress"
) -> tuple[Path, Path]:
    """The one Ingress (or HTTPRoute) file that changes, rendered now to a hidden file, so
    that only the rename (what a deploy tool does) is timed."""
    import yaml

    index = flipped // PER_INGRESS
    tmp = manifests / f".ing{index}.next"
    tmp.write_text(yaml.safe_dump_all([_routes(kind, index, count, flipped, [])]))
    return tmp, manifests / f"ing{index}.yaml"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def change_to_request(
    count: int, runs: int, work: Path, kind: Kind = "ingress"
) -> dict[str, str]:
    backends = {name: await Backend(name).start() for name in "ab"}
    ports = {name: b.port for name, b in backends.items()}
    manifests = work / "manifests"
    manifests.mkdir(parents=True)
    server = XdsServer(work, manifests)
    configs = ["ingress_http", "ingress_https"]
    if kind == "httproute":
        server.serving_port = free_port()
        configs = [f"gateway_127.0.0.1_{server.serving_port}"]
    write_all(
        manifests, route_files(count, None, ports, kind=kind, gateway_port=server.serving_port)
    )
    await server.start()
    envoy = XdsEnvoy(work, server, f"bench-{count}")
    process = psutil.Process(server.proc.pid if server.proc else 0)
    samples: list[float] = []
    peak = 0
    try:
        await envoy.start()
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            await _until(client, envoy.url("/r0"), "h0.example.com", "a")
            cpu_before = sum(process.cpu_times()[:2])
            for run in range(runs):
                target = (run * 7919) % count
                ready, final = prepared(manifests, count, target, kind)
                await asyncio.sleep(SPACING)
                started = time.monotonic()
                ready.rename(final)
                await _until(client, envoy.url(f"/r{target}"), host_of(target), "b")
                samples.append(time.monotonic() - started)
                peak = max(peak, process.memory_info().rss)
            cpu = sum(process.cpu_times()[:2]) - cpu_before
        fanout = await fan_out(server, manifests, count, configs, kind, runs=max(3, runs // 3))
    finally:
        envoy.stop()
        server.stop()
        for backend in backends.values():
            await backend.stop()
    return {
        "routes": f"{count:,}" + (" HTTPRoute rules" if kind == "httproute" else ""),
        "change -> request p50": f"{statistics.median(samples) * 1000:.0f} ms",
        "p99": f"{pct(samples, 0.99) * 1000:.0f} ms",
        "100 proxies ACKed p50 / p99": fanout,
        "server CPU per change": f"{cpu / runs * 1000:.0f} ms",
        "server peak RSS": f"{peak / 2**20:.0f} MiB",
    }


async def _until(
    client: httpx.AsyncClient, url: str, host: str, body: str, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = await client.get(url, headers={"Host": host})
            if response.status_code == 200 and response.text == body:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.002)
    raise TimeoutError(f"{url} never answered {body}")


async def fan_out(
    server: XdsServer, manifests: Path, count: int, configs: list[str], kind: Kind, runs: int
) -> str:
    address = f"127.0.0.1:{server.grpc_port}"
    proxies = [
        await SyntheticProxy(address, f"synthetic-{n}", route_configs=configs).start()
        for n in range(100)
    ]
    samples: list[float] = []
    try:
        await _all_have_some_route(proxies)
        for run in range(runs):
            before = {id(p): p.routes_version for p in proxies}
            ready, final = prepared(manifests, count, (run * 31 + 3) % count, kind)  # a change
            await asyncio.sleep(SPACING)
            started = time.monotonic()
            ready.rename(final)
            while not all(p.routes_version not in ("", before[id(p)]) for p in proxies):
                if time.monotonic() - started > 60:
                    raise TimeoutError("fan-out did not complete")
                await asyncio.sleep(0.002)
            samples.append(time.monotonic() - started)
    finally:
        for proxy in proxies:
            await proxy.stop()
    return f"{statistics.median(samples) * 1000:.0f} / {pct(samples, 0.99) * 1000:.0f} ms"


async def _all_have_some_route(proxies: list[SyntheticProxy]) -> None:
    deadline = time.monotonic() + 60
    while not all(p.routes_version for p in proxies):
        if time.monotonic() > deadline:
            raise TimeoutError("proxies did not sync")
        await asyncio.sleep(0.01)


# -- where the time goes: the server in process, so its publish time can be read ---------


async def _raw_get(port: int, host: str, path: str) -> str:
    """One request on a fresh connection, without a client library (~0.3 ms)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return data.split(b"\r\n\r\n", 1)[1].decode()


async def split(count: int, runs: int, work: Path) -> dict[str, str]:
    """Change -> snapshot published (the server's share) and published -> Envoy serves it
    (the push, and Envoy rebuilding its route table: its share)."""
    from types import SimpleNamespace

    from xds_server.app import ControlPlane, ServeConfig

    backends = {name: await Backend(name).start() for name in "ab"}
    manifests = work / "split"
    manifests.mkdir(parents=True)
    write_all(manifests, route_files(count, None, {n: b.port for n, b in backends.items()}))
    http = free_port()
    ports = EnvoyPorts("127.0.0.1", http, free_port())
    plane = ControlPlane(ServeConfig(manifests, "127.0.0.1", 0, "127.0.0.1", 0, ports, None, None))
    await plane.startup()
    feeder = asyncio.create_task(plane._feed())
    target = SimpleNamespace(grpc_port=plane.grpc_port, envoy_http_port=http, serving_port=http)
    envoy = XdsEnvoy(work, target, f"split-{count}")  # type: ignore[arg-type]
    server_share: list[float] = []
    envoy_share: list[float] = []
    published_at: list[float] = []
    published = asyncio.Event()
    publish = plane.store.publish

    def timed(snapshot: Snapshot) -> bool:
        done = publish(snapshot)
        if done:
            published_at.append(time.monotonic())  # the moment streams may send it
            published.set()
        return done

    plane.store.publish = timed  # type: ignore[method-assign]
    try:
        await asyncio.wait_for(plane.store.wait_after(0), 300)  # the first build, then Envoy
        await envoy.start()
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            await _until(client, f"http://127.0.0.1:{http}/r0", "h0.example.com", "a")
        for run in range(runs):
            route = (run * 7919 + 5) % count
            ready, final = prepared(manifests, count, route)
            await asyncio.sleep(SPACING)
            published_at.clear()
            published.clear()
            started = time.monotonic()
            ready.rename(final)
            # Idle until the server has published (nothing of ours competes with it for the
            # CPU or the event loop), then ask Envoy until it serves the change.
            await asyncio.wait_for(published.wait(), 10)
            while await _raw_get(http, host_of(route), f"/r{route}") != "b":  # noqa: ASYNC110
                await asyncio.sleep(POLL)  # Envoy says nothing when it is done: ask it
            served = time.monotonic()
            server_share.append(published_at[0] - started)
            envoy_share.append(served - published_at[0])
    finally:
        envoy.stop()
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
        await plane.shutdown()
        for backend in backends.values():
            await backend.stop()
    return {
        "routes": f"{count:,}",
        "change -> published p50 / p99": f"{_ms(server_share)}",
        "published -> Envoy serves p50 / p99": f"{_ms(envoy_share)}",
    }


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} / {pct(values, 0.99) * 1000:.0f} ms"


# -- bytes per change: the server's own stream code, in process --------------------------


def _snapshot(count: int, flipped: int | None, endpoints: int, serial: int) -> Snapshot:
    import yaml

    ports = {"a": 9000, "b": 9001}
    files = route_files(count, flipped, ports, services=BYTES_SERVICES)
    objects = [obj for batch in files.values() for obj in batch]
    addresses = [f"10.0.{i // 250}.{i % 250}" for i in range(endpoints)]
    objects[5] = endpoint_slice("s0", "http", 9100, addresses)  # after a, b and s0's Service
    loaded = parse_documents(yaml.safe_dump_all(objects), "bench.yaml")
    built = model.build(loaded.objects, None)
    return Snapshot.build(resources(built, EnvoyPorts()), serial)


def _sync(stream: SotwStream | DeltaStream, snapshot: Snapshot) -> None:
    """Bring a stream to `snapshot` the way Envoy would: request every type, ACK everything."""
    names = {
        CLUSTER: [],
        LISTENER: [],
        ENDPOINT: list(snapshot.entries(CLUSTER)),
        ROUTE: ["ingress_http"],
        VHOST: [],  # delta only: Envoy asks for the virtual hosts (VHDS) after the routes
    }
    for type_url in PUSH_ORDER:
        if type_url not in names or (type_url == VHOST and isinstance(stream, SotwStream)):
            continue
        if isinstance(stream, SotwStream):
            stream.handle(
                discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names[type_url]),
                snapshot,
            )
        else:
            stream.handle(
                discovery_pb2.DeltaDiscoveryRequest(
                    type_url=type_url, resource_names_subscribe=names[type_url]
                ),
                snapshot,
            )
    _drain_acks(stream, snapshot)


def _drain_acks(stream: SotwStream | DeltaStream, snapshot: Snapshot) -> int:
    """ACK every response as Envoy does, and follow a cluster update with the endpoint
    subscription Envoy sends for it (delta: the new names; SotW: the whole list)."""
    sent = 0
    while not stream.out.empty():
        response = stream.decode(stream.out.get_nowait())
        sent += response.ByteSize()  # what the bytes on the wire decode to
        clusters = list(stream.types[CLUSTER].sent_entries) if response.type_url == CLUSTER else []
        if isinstance(stream, SotwStream):
            names = list(stream.types[response.type_url].names)
            ack = discovery_pb2.DiscoveryRequest(
                type_url=response.type_url,
                version_info=response.version_info,
                response_nonce=response.nonce,
                resource_names=names,
            )
            stream.handle(ack, snapshot)
            endpoints = stream.types[ENDPOINT]
            if clusters and set(clusters) != endpoints.names:
                resubscribe = discovery_pb2.DiscoveryRequest(
                    type_url=ENDPOINT,
                    version_info=endpoints.acked_version or "",
                    response_nonce=endpoints.nonce,
                    resource_names=sorted(clusters),
                )
                stream.handle(resubscribe, snapshot)
        else:
            ack_delta = discovery_pb2.DeltaDiscoveryRequest(
                type_url=response.type_url, response_nonce=response.nonce
            )
            stream.handle(ack_delta, snapshot)
            new = [n for n in clusters if n not in stream.types[ENDPOINT].names]
            if new:
                subscribe = discovery_pb2.DeltaDiscoveryRequest(
                    type_url=ENDPOINT, resource_names_subscribe=new
                )
                stream.handle(subscribe, snapshot)
    return sent


BYTES_SERVICES = 50
"""Services the routes spread over in the bytes table (SotW resends all of them)."""


def bytes_per_change(count: int) -> dict[str, str]:
    base = _snapshot(count, None, 100, 1)
    changes = {
        "one route": _snapshot(count, 1, 100, 2),
        "one endpoint": _snapshot(count, None, 101, 2),
    }
    row = {"routes": f"{count:,}"}
    for label, changed in changes.items():
        for flavour in (SotwStream, DeltaStream):
            from xds_server.xds.cache import SnapshotStore

            stream = flavour(SnapshotStore(), XdsMetrics())
            _sync(stream, base)
            stream.push(changed)
            row[f"{label}: {'SotW' if flavour is SotwStream else 'delta'}"] = (
                f"{_drain_acks(stream, changed) / 1024:.1f} KiB"
            )
    return row


async def churn(seconds: float, work: Path) -> dict[str, str]:
    """RSS of the server before and after `seconds` of changes every 50 ms (100 routes)."""
    manifests = work / "churn"
    manifests.mkdir(parents=True)
    ports = {"a": 9000, "b": 9001}
    write_all(manifests, route_files(1000, None, ports))
    server = await XdsServer(work, manifests).start()
    proxies = [
        await SyntheticProxy(f"127.0.0.1:{server.grpc_port}", f"c{n}").start() for n in range(10)
    ]
    try:
        process = psutil.Process(server.proc.pid if server.proc else 0)
        await asyncio.sleep(1)
        warm = time.monotonic() + min(10.0, seconds / 4)
        end = time.monotonic() + seconds
        step, before = 0, 0
        while time.monotonic() < end:
            if not before and time.monotonic() > warm:
                before = process.memory_info().rss
            step += 1
            index = step % 100
            write_manifests(manifests, f"ing{index}", [_ingress(index, 1000, step % 1000, [])])
            await asyncio.sleep(0.05)
        after = process.memory_info().rss
    finally:
        for proxy in proxies:
            await proxy.stop()
        server.stop()
    return {
        "churn": f"{seconds:g} s, {step} changes, 10 proxies",
        "RSS after warm-up": f"{before / 2**20:.1f} MiB",
        "RSS at the end": f"{after / 2**20:.1f} MiB",
    }


def table(rows: list[dict[str, str]]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row[h] for h in header) + " |" for row in rows]
    return "\n".join(lines)


async def main(quick: bool, churn_seconds: float, counts: list[int]) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-xds-", dir="/tmp") as tmp:
        root = Path(tmp)
        sizes = tuple(
            (count, (3 if count >= 10_000 else 5) if quick else (10 if count >= 10_000 else 20))
            for count in counts
        )
        rows = [await change_to_request(count, runs, root / str(count)) for count, runs in sizes]
        print("### One changed route, through a real Envoy (delta ADS)\n")
        print(table(rows))
        rows = [
            await change_to_request(count, runs, root / f"gw-{count}", "httproute")
            for count, runs in sizes
        ]
        print("\n### One changed HTTPRoute rule, through a real Envoy (delta ADS)\n")
        print(table(rows))
        print("\n### Where the time goes (server in process, same Envoy)\n")
        print(
            table([await split(count, SPLIT_RUNS, root / f"split-{count}") for count, _ in sizes])
        )
        print(
            f"\n### Bytes one change costs a proxy "
            f"({BYTES_SERVICES} clusters, 100 endpoints in one)\n"
        )
        print(table([bytes_per_change(count) for count, _ in sizes]))
        if churn_seconds:
            print("\n### Server memory under churn\n")
            print(table([await churn(churn_seconds, root)]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="xDS control-plane benchmark")
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    parser.add_argument("--churn", type=float, default=600, help="seconds of churn (0: skip)")
    parser.add_argument(
        "--routes",
        default="100,1000,10000",
        help="comma-separated route counts to measure (default: 100,1000,10000)",
    )
    args = parser.parse_args()
    asyncio.run(main(args.quick, args.churn, [int(n) for n in args.routes.split(",")]))
