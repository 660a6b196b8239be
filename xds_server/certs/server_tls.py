"""The server's side of mTLS: its pair reloaded without a restart, clients checked by identity.

gRPC asks `fetch` before every handshake, from one of its own threads. `fetch` costs one
readlink when nothing changed; after a `..data` swap it reads that one version, checks it
(key matches, chains to the trust bundle, server usage) and hands gRPC the new pair and
bundle, which new handshakes use while open streams keep theirs. A bad pair is logged,
counted and refused, and the last good one stays. `fetch` never raises: an exception there
would fail the handshake.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import grpc
from cryptography import x509

from xds_server.certs import pki
from xds_server.certs.directory import BUNDLE, CERT, KEY
from xds_server.certs.secret_volume import SecretVolume, Version
from xds_server.metrics import XdsMetrics

log = logging.getLogger("xds_server.tls")


class ServerTls:
    def __init__(self, volume: SecretVolume, metrics: XdsMetrics) -> None:
        self.volume = volume
        self.metrics = metrics
        self._lock = threading.Lock()
        self._seen: str | None = None
        self._pending: grpc.ServerCertificateConfiguration | None = None

    def credentials(self) -> grpc.ServerCredentials:
        """Dynamic credentials that require a client certificate from the trusted CAs."""
        initial = self.refresh()
        if initial is None:
            raise pki.InvalidPair(f"no valid server certificate in {self.volume.path}")
        self._pending = None
        # grpc-stubs say the fetcher must return a config; gRPC documents None as "no change".
        return grpc.dynamic_ssl_server_credentials(
            initial,
            self.fetch,  # type: ignore[arg-type]
            require_client_authentication=True,
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            self.refresh()
            with self._lock:
                pending, self._pending = self._pending, None
            return pending
        except Exception:  # a raise here would fail the handshake, so the old pair stays
            log.exception("server certificate reload failed; the current pair stays")
            return None

    def refresh(self) -> grpc.ServerCertificateConfiguration | None:
        """Load the store if it changed since the last look; the new config, or None."""
        with self._lock:
            version = self.volume.current()
            if version is not None and version == self._seen:
                return None
            loaded = self.volume.read()
            if loaded is None or loaded.name == self._seen:
                return None
            self._seen = loaded.name
            config = self._load(loaded)
            if config is not None:
                self._pending = config
            return config

    def _load(self, version: Version) -> grpc.ServerCertificateConfiguration | None:
        files = version.files
        try:
            if not {CERT, KEY, BUNDLE} <= files.keys():
                raise pki.InvalidPair(f"needs {CERT}, {KEY} and {BUNDLE}")
            pair = pki.Pair(files[CERT], files[KEY])
            bundle = pki.load_bundle(files[BUNDLE])
            cert = pki.validate(pair, bundle, "server", dates=False)
        except (pki.InvalidPair, ValueError) as exc:
            self.metrics.cert_rejected.inc()
            log.error(
                "server certificate in %s rejected, the current pair stays: %s",
                self.volume.path,
                exc,
            )
            return None
        self.metrics.cert_reloads.inc()
        self.metrics.cert_serial.info({"server": pki.serial_hex(cert)})
        log.info(
            "server certificate %s loaded (trusting %d CA(s))", pki.serial_hex(cert), len(bundle)
        )
        return grpc.ssl_server_certificate_configuration(
            [(pair.key, pair.certificate)], root_certificates=files[BUNDLE]
        )


def client_identity(context: Any) -> tuple[list[str], str]:
    """The URI and DNS SANs of the peer's certificate, and its serial ('' without TLS)."""
    auth = context.auth_context()
    pem = (auth.get("x509_pem_cert") or [b""])[0]
    if not pem:
        return [], ""
    cert = x509.load_pem_x509_certificate(pem)
    return pki.names_of(cert), pki.serial_hex(cert)


class IdentityCheck:
    """Admit a stream only if the client's certificate carries the Envoy identity: a
    certificate for something else from the same CA is not enough."""

    def __init__(self, identity: str, metrics: XdsMetrics) -> None:
        self.identity = identity
        self.metrics = metrics

    def refusal(self, context: Any) -> str | None:
        names, serial = client_identity(context)
        if self.identity in names:
            log.debug("client certificate %s admitted", serial)
            return None
        self.metrics.clients_refused.inc()
        return f"client certificate {serial or '(none)'} does not carry {self.identity}"
