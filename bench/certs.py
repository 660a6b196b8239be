"""Certificate rotation as the proxies see it, against a real Envoy and the real server.

For N forced leaf rotations: time from the `..data` swap to Envoy having loaded its new
client certificate (admin /certs, polled back to back), and to the server presenting its
new certificate in a fresh handshake. Then one CA rotation: total time and
whether the xDS stream survived. Prints a table; `--runs` sets N.

Anchors, as policies (their binaries are not run here): Contour's certgen issues one-year
RSA leaves with a new CA on each run and renews nothing, so a rotation means re-running the
job and restarting Contour and every Envoy; go-control-plane leaves certificates to the
embedding program.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]

from bench.lab.backend import Backend
from bench.lab.certs import (
    init_certs,
    loaded_client_serial,
    presented_serial,
    stored_serial,
)
from bench.lab.xds import XdsEnvoy, XdsServer, one_backend, write_manifests
from xds_server.certs.directory import CertDirectory
from xds_server.certs.rotation import Rotator


async def _until_equal(probe: object, want: str, interval: float, timeout: float = 10) -> float:
    """Seconds until `await probe()` returns `want`."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if await probe() == want:  # type: ignore[operator]
            return time.perf_counter() - start
        await asyncio.sleep(interval)
    raise TimeoutError(f"never saw {want}")


async def leaf_rotations(
    certs: CertDirectory, server: XdsServer, envoy: XdsEnvoy, runs: int
) -> tuple[list[float], list[float], float, float]:
    """Each side measured on its own rotation, so one probe never delays the other."""
    rotator = Rotator(certs, propagation_delay=1)
    to_envoy: list[float] = []
    to_server: list[float] = []
    probe: list[float] = []

    async def server_serial() -> str:
        return await presented_serial(server.grpc_port, certs)

    async def envoy_serial() -> str:
        return await loaded_client_serial(envoy.admin_socket)

    for _ in range(runs):
        await asyncio.to_thread(rotator.step, True)
        to_envoy.append(await _until_equal(envoy_serial, stored_serial(certs, "envoy"), 0))
        await asyncio.to_thread(rotator.step, True)
        to_server.append(await _until_equal(server_serial, stored_serial(certs, "server"), 0))
        start = time.perf_counter()
        await server_serial()
        probe.append(time.perf_counter() - start)
        start = time.perf_counter()
        await envoy_serial()
        probe.append(time.perf_counter() - start)
    return to_envoy, to_server, statistics.median(probe[0::2]), statistics.median(probe[1::2])


def ms(values: list[float], q: float) -> str:
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.1f}"


async def main(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        backend = await Backend("b").start()
        manifests = work / "manifests"
        manifests.mkdir()
        write_manifests(manifests, "app", one_backend(backend.port))
        certs = init_certs(work / "certs")
        server = await XdsServer(work, manifests, certs_dir=certs.root).start()
        envoy = XdsEnvoy(work, server, "bench", certs_dir=certs.root)
        try:
            await envoy.start()
            measured = await leaf_rotations(certs, server, envoy, runs)
            to_envoy, to_server, server_probe, envoy_probe = measured
            start = time.perf_counter()
            rotator = Rotator(certs, propagation_delay=1)
            await asyncio.to_thread(rotator.step, False, True)
            while certs.authority().phase != "steady":  # type: ignore[union-attr]
                await asyncio.sleep(0.05)
                await asyncio.to_thread(rotator.step)
            ca_seconds = time.perf_counter() - start
            await _until_equal(envoy.client_serial, stored_serial(certs, "envoy"), 0.01)
            stats = await envoy.stats(r"^cluster\.xds_cluster\.upstream_cx_total$")
        finally:
            envoy.stop()
            server.stop()
            await backend.stop()
    print(f"leaf rotations: {runs} (ECDSA P-256, forced), Envoy 1.40 over delta ADS + mTLS\n")
    print("| swap -> in use | p50 ms | p90 ms | max ms | mean ms |")
    print("|---|---|---|---|---|")
    for label, values in (
        ("Envoy has loaded its new client certificate (SDS watched_directory)", to_envoy),
        ("server presents its new certificate to a new handshake", to_server),
    ):
        print(
            f"| {label} | {ms(values, 0.5)} | {ms(values, 0.9)} | {ms(values, 1.0)} | "
            f"{statistics.mean(values) * 1000:.1f} |"
        )
    print(
        f"\nProbe costs, included above: a fresh handshake {server_probe * 1000:.1f} ms, "
        f"a raw admin /certs read {envoy_probe * 1000:.1f} ms (polled back to back)."
    )
    print(
        f"CA rotation with a 1 s propagation delay: {ca_seconds:.2f} s for three steps; "
        f"xDS connections opened by Envoy over the whole run: "
        f"{stats['cluster.xds_cluster.upstream_cx_total']} (1 = never reset)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="forced leaf rotations")
    asyncio.run(main(parser.parse_args().runs))
