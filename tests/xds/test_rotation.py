"""Certificate rotation with a real Envoy and the real server: nothing restarts, nothing
fails, and both sides end up presenting the new certificates."""

from __future__ import annotations

import asyncio
import re
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bench.lab.backend import Backend
from bench.lab.certs import (
    assert_consistent,
    certs_cli,
    init_certs,
    presented_serial,
    stored_serial,
)
from bench.lab.clients import Tally, steady_load
from bench.lab.wait import until
from bench.lab.xds import (
    XdsEnvoy,
    XdsServer,
    app,
    ingress,
    rule,
    who,
    write_manifests,
)
from xds_server.certs import pki
from xds_server.certs.directory import CertDirectory
from xds_server.certs.rotation import Rotator

pytestmark = pytest.mark.timeout(120)


def catch_all(backend: str) -> dict[str, Any]:
    return ingress("i", [rule(None, ("/", "Prefix", backend, 80))])


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


class Handshakes:
    """Fresh mTLS handshakes with the server every 50 ms, each with the pair Envoy's store
    holds at that moment: every one must succeed, whatever the rotation is doing."""

    def __init__(self, port: int, certs: CertDirectory) -> None:
        self.port, self.certs = port, certs
        self.ok, self.failed, self.errors = 0, 0, list[str]()
        self.stop = asyncio.Event()

    async def run(self) -> None:
        while not self.stop.is_set():
            try:
                await presented_serial(self.port, self.certs)
                self.ok += 1
            except (OSError, ssl.SSLError) as exc:
                self.failed += 1
                self.errors.append(repr(exc))
            await asyncio.sleep(0.05)


async def test_leaves_then_the_ca_rotate_under_traffic_and_xds_updates_with_nothing_failing(
    workdir: Path, manifests: Path, backends: dict[str, Backend], processes: list[Any]
) -> None:
    certs = init_certs(workdir / "certs", "--leaf-lifetime", "8s")  # renewed every ~5 s
    write_manifests(manifests, "app", [*app(backends), catch_all("a")])
    server = XdsServer(
        workdir, manifests, "--rotate", "--propagation-delay", "1", certs_dir=certs.root
    )
    processes.append(await server.start())
    envoy = XdsEnvoy(workdir, server, "rotating", certs_dir=certs.root)
    processes.append(await envoy.start())
    first = {which: stored_serial(certs, which) for which in ("server", "envoy")}
    first_ca = pki.serial_hex(certs.authority().signer.cert)  # type: ignore[union-attr]

    stop, tally = asyncio.Event(), Tally()
    handshakes = Handshakes(server.grpc_port, certs)
    load = [asyncio.create_task(steady_load(envoy.url("/"), stop, tally)) for _ in range(2)]
    probe = asyncio.create_task(handshakes.run())
    hosts: list[str] = []

    async def xds_updates() -> None:  # a new host every 300 ms while certificates turn over
        while not stop.is_set():
            hosts.append(f"h{len(hosts)}.example")
            rules = [rule(host, ("/", "Prefix", "b", 80)) for host in hosts]
            write_manifests(manifests, "hosts", [ingress("hosts", rules)])
            await asyncio.sleep(0.3)

    updates = asyncio.create_task(xds_updates())
    # 1. The server's own rotator renews both leaves (two thirds of 8 s, with jitter).
    await until(
        lambda: _changed(certs, first),
        timeout=15,
    )
    # 2. A CA rotation, three steps one second apart, while the rotator keeps renewing.
    result = await asyncio.to_thread(
        certs_cli, "rotate", "--dir", str(certs.root), "--ca", "--propagation-delay", "1"
    )
    assert result.returncode == 0, result.stderr
    new_ca = pki.serial_hex(certs.authority().signer.cert)  # type: ignore[union-attr]
    assert new_ca != first_ca
    # 3. Both sides present what the stores hold now.
    await until(lambda: _envoy_uses_store(envoy, certs), timeout=10)
    await until(lambda: _server_uses_store(server, certs), timeout=10)
    assert await envoy.trusted_serials() == {new_ca}
    await asyncio.sleep(0.5)
    stop.set()
    handshakes.stop.set()
    await asyncio.gather(*load, updates, probe)

    assert tally.failed == 0, tally.errors[:5]
    assert tally.ok > 100
    assert handshakes.failed == 0, handshakes.errors[:5]
    assert handshakes.ok > 20
    await until(lambda: _routed(envoy, hosts[-1]))  # xDS kept flowing through it all
    stats = await envoy.stats(r"^cluster\.xds_cluster\.(upstream_cx_total|ssl\.connection_error)$")
    assert stats["cluster.xds_cluster.upstream_cx_total"] == 1, "the xDS stream was reset"
    assert stats["cluster.xds_cluster.ssl.connection_error"] == 0
    metrics = await server.metrics()
    assert metric(metrics, "xds_clients_refused_total") == 0
    assert metric(metrics, "xds_certificate_rejected_total") == 0
    assert metric(metrics, 'xds_certificate_rotations_total{store="server"}') >= 1
    assert_consistent(certs)


async def _changed(certs: CertDirectory, first: dict[str, str]) -> bool:
    return all(stored_serial(certs, which) != serial for which, serial in first.items())


async def _envoy_uses_store(envoy: XdsEnvoy, certs: CertDirectory) -> bool:
    return await envoy.client_serial() == stored_serial(certs, "envoy")


async def _server_uses_store(server: XdsServer, certs: CertDirectory) -> bool:
    return await presented_serial(server.grpc_port, certs) == stored_serial(certs, "server")


async def _routed(envoy: XdsEnvoy, host: str) -> bool:
    return await who(envoy, host, "/") == "b"


async def test_a_hot_restart_in_the_middle_of_rotations_comes_up_consistent_and_serves(
    workdir: Path, manifests: Path, backends: dict[str, Backend], processes: list[Any]
) -> None:
    """Leaves are renewed back to back (and the CA rotated) while Envoy hot-restarts three
    times: each new epoch reads whatever pair is on disk as it starts, connects over mTLS
    and takes config and traffic."""
    certs = init_certs(workdir / "certs")
    write_manifests(manifests, "app", [*app(backends), catch_all("a")])
    server = await XdsServer(workdir, manifests, certs_dir=certs.root).start()
    processes.append(server)
    envoy = XdsEnvoy(workdir, server, "restarting", certs_dir=certs.root, hot_restart=True)
    processes.append(await envoy.start())
    stop = threading.Event()
    rotations = 0

    def churn() -> None:
        nonlocal rotations
        rotator = Rotator(CertDirectory(certs.root), propagation_delay=0.5)
        while not stop.is_set():
            rotator.step(force=True, rotate_ca=rotations % 40 == 0)
            rotations += 1
            time.sleep(0.01)

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        for epoch in range(1, 4):
            await envoy.hot_restart()
            connected = await envoy.stats(r"^control_plane\.connected_state$")
            assert connected == {"control_plane.connected_state": 1}, f"epoch {epoch}"
            write_manifests(
                manifests,
                "hosts",
                [ingress("e", [rule(f"e{epoch}.example", ("/", "Prefix", "c", 80))])],
            )
            await until(lambda e=epoch: _routed_to(envoy, f"e{e}.example", "c"))
            assert await who(envoy, "any", "/") == "a"
    finally:
        stop.set()
        churner.join()
    assert rotations > 50
    assert_consistent(certs)


async def _routed_to(envoy: XdsEnvoy, host: str, backend: str) -> bool:
    return await who(envoy, host, "/") == backend


async def test_a_bad_pair_dropped_into_a_store_is_refused_and_the_old_one_kept(
    workdir: Path, manifests: Path, backends: dict[str, Backend], processes: list[Any]
) -> None:
    certs = init_certs(workdir / "certs")
    other = init_certs(workdir / "other")
    write_manifests(
        manifests,
        "app",
        [*app(backends, "a"), ingress("i", [rule(None, ("/", "Prefix", "a", 80))])],
    )
    server = await XdsServer(workdir, manifests, certs_dir=certs.root).start()
    processes.append(server)
    envoy = XdsEnvoy(workdir, server, "bad-pair", certs_dir=certs.root)
    processes.append(await envoy.start())
    serving = stored_serial(certs, "server")
    envoy_serial = await envoy.client_serial()

    mismatched = certs.leaf("server") | {"tls.key": other.leaf("server")["tls.key"]}
    certs.stores["server"].write(mismatched)  # written by someone else: no check
    assert await presented_serial(server.grpc_port, certs) == serving
    certs.stores["envoy"].write({**certs.leaf("envoy"), "tls.crt": b"not a certificate"})
    await asyncio.sleep(0.3)
    assert await envoy.client_serial() == envoy_serial  # Envoy kept its pair too

    await until(lambda: _logged(server, "rejected, the current pair stays"))
    metrics = await server.metrics()
    assert metric(metrics, "xds_certificate_rejected_total") == 1
    assert metric(metrics, 'xds_certificate_problem{store="server"}') == 1
    assert await who(envoy, "any", "/") == "a"

    fixed = certs_cli("rotate", "--dir", str(certs.root))  # repairs both stores
    assert fixed.returncode == 0, fixed.stderr
    assert "server: new certificate" in fixed.stdout
    await until(lambda: _server_uses_store(server, certs))
    await until(lambda: _envoy_uses_store(envoy, certs))


async def _logged(server: XdsServer, text: str) -> bool:
    return text in server.log()


async def test_an_expired_certificate_is_reported_in_metrics(
    workdir: Path, manifests: Path, backends: dict[str, Backend], processes: list[Any]
) -> None:
    certs = init_certs(workdir / "certs", "--leaf-lifetime", "2s")
    write_manifests(manifests, "app", app(backends, "a"))
    server = await XdsServer(workdir, manifests, certs_dir=certs.root).start()
    processes.append(server)
    name = 'xds_certificate_expiry_timestamp_seconds{store="server"}'
    expires = metric(await server.metrics(), name)
    assert abs(expires - (time.time() + 2)) < 5
    await until(lambda: _problem(server, "server", 1), timeout=10)  # due, then expired
    await asyncio.sleep(max(0.0, expires - time.time() + 0.2))
    check = certs_cli("check", "--dir", str(certs.root))
    assert check.returncode == 1
    assert "EXPIRED" in check.stdout
    await until(lambda: _logged(server, "EXPIRED"))  # the server noticed as it expired
    assert "certificate server needs attention" in server.log()
    renewed = certs_cli("rotate", "--dir", str(certs.root))  # renews what expired
    assert renewed.returncode == 0, renewed.stderr
    await until(lambda: _problem(server, "server", 0))
    await until(lambda: _problem(server, "envoy", 0))


async def _problem(server: XdsServer, store: str, value: int) -> bool:
    return metric(await server.metrics(), f'xds_certificate_problem{{store="{store}"}}') == value
