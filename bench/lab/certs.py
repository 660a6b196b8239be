"""The certificate directory from a test's side: run `xds-server certs`, read the stores,
and look at what a TLS peer is really presented."""

from __future__ import annotations

import asyncio
import re
import ssl
import subprocess
import sys
from pathlib import Path

from cryptography import x509

from xds_server.certs import pki
from xds_server.certs.directory import BUNDLE, CERT, KEY, CertDirectory

CERTS = [sys.executable, "-m", "xds_server", "certs"]


def certs_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CERTS, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def init_certs(directory: Path, *flags: str) -> CertDirectory:
    """A CA and both leaves; the server certificate also names 127.0.0.1."""
    result = certs_cli("init", "--dir", str(directory), "--san", "127.0.0.1", *flags)
    assert result.returncode == 0, result.stderr
    return CertDirectory(directory)


def stored(certs: CertDirectory, which: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(certs.leaf(which)[CERT])


def stored_serial(certs: CertDirectory, which: str) -> str:
    return pki.serial_hex(stored(certs, which))


def assert_consistent(certs: CertDirectory) -> None:
    """Each store holds a pair that matches and chains to its own bundle, and each side
    trusts the CA that issued the other side's certificate: a handshake would succeed."""
    leaves = {}
    for which in ("server", "envoy"):
        files = certs.leaf(which)
        pair = pki.Pair(files[CERT], files[KEY])
        leaves[which] = (pki.validate(pair, pki.load_bundle(files[BUNDLE])), files[BUNDLE])
    for me, other in (("server", "envoy"), ("envoy", "server")):
        bundle = pki.load_bundle(leaves[me][1])
        assert any(pki.issued_by(leaves[other][0], ca) for ca in bundle), (
            f"{me} does not trust the issuer of {other}'s certificate"
        )


async def presented_serial(
    port: int, certs: CertDirectory, name: str = "xds-server", host: str = "127.0.0.1"
) -> str:
    """A fresh mTLS handshake with the server as Envoy would make it (Envoy's pair, SNI
    `name`): the serial of the certificate the server presents now."""
    version = certs.stores["envoy"].read()
    assert version is not None
    directory = certs.root / "envoy" / version.name
    context = ssl.create_default_context(cafile=str(directory / BUNDLE))
    context.load_cert_chain(str(directory / CERT), str(directory / KEY))
    context.set_alpn_protocols(["h2"])
    _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=name)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return pki.serial_hex(x509.load_der_x509_certificate(der))


CLIENT_SERIAL = re.compile(r'"cert_chain":\s*\[\s*\{[^\]]*?"serial_number":\s*"([0-9a-f]+)"')


async def loaded_client_serial(admin_socket: Path) -> str:
    """Envoy's loaded client certificate over a raw admin request (~1 ms; an httpx client
    per call costs ~30 ms and would hide the latency being measured)."""
    reader, writer = await asyncio.open_unix_connection(str(admin_socket))
    writer.write(b"GET /certs HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
    raw = (await reader.read()).decode()
    writer.close()
    found = CLIENT_SERIAL.search(raw)
    return found.group(1).lstrip("0") if found else ""
