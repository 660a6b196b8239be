"""The certificate directory: a CA and two leaves, each in its own secret-volume store.

    DIR/ca/      tls.crt tls.key  the signing CA;  ca.crt  the CAs trusted now
                 profile.json     what leaves say (names, identity, algorithm, lifetimes)
                 rotation.json    where a CA rotation stands; next.crt next.key its new CA
    DIR/server/  tls.crt tls.key ca.crt   the xDS server's pair and trust bundle
    DIR/envoy/   tls.crt tls.key ca.crt   Envoy's client pair and trust bundle

In Kubernetes each store is one `kubernetes.io/tls` Secret mounted as a volume: the server
pod mounts `server` (and the rotator the CA), Envoy pods mount `envoy`. Everything a
renewal needs is in the CA store, so a damaged leaf can always be issued again.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from xds_server.certs import pki
from xds_server.certs.secret_volume import SecretVolume, Version

CERT, KEY, BUNDLE = "tls.crt", "tls.key", "ca.crt"
NEXT_CERT, NEXT_KEY = "next.crt", "next.key"
PROFILE, ROTATION = "profile.json", "rotation.json"
CA, SERVER, ENVOY = "ca", "server", "envoy"
LEAVES = (SERVER, ENVOY)
DEFAULT_IDENTITY = "spiffe://envoy-lifecycle/envoy"
"""The URI SAN an Envoy client certificate carries and the server requires."""

Phase = Literal["steady", "trusting", "reissuing"]


class CertError(Exception):
    """The directory cannot be used as it is (one line for the operator)."""


def service_names(service: str, namespace: str) -> list[str]:
    """The names a client inside the cluster may use for the server's Service."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


@dataclass(frozen=True)
class Profile:
    algorithm: pki.Algorithm
    ca_lifetime: datetime.timedelta
    leaf_lifetime: datetime.timedelta
    server_names: list[str]
    client_identity: str = DEFAULT_IDENTITY

    def leaf(self, which: str) -> tuple[str, list[str], pki.Usage]:
        """Common name, SANs and usage of a leaf."""
        if which == SERVER:
            return "xds-server", self.server_names, "server"
        return "envoy", [self.client_identity], "client"

    def dumps(self) -> bytes:
        return json.dumps(
            {
                "algorithm": self.algorithm,
                "ca_lifetime_seconds": self.ca_lifetime.total_seconds(),
                "leaf_lifetime_seconds": self.leaf_lifetime.total_seconds(),
                "server_names": self.server_names,
                "client_identity": self.client_identity,
            },
            indent=2,
        ).encode()

    @classmethod
    def loads(cls, data: bytes) -> Profile:
        raw = json.loads(data)
        if raw["algorithm"] not in pki.ALGORITHMS:
            raise ValueError(f"unknown algorithm {raw['algorithm']!r}")
        return cls(
            algorithm=raw["algorithm"],
            ca_lifetime=datetime.timedelta(seconds=float(raw["ca_lifetime_seconds"])),
            leaf_lifetime=datetime.timedelta(seconds=float(raw["leaf_lifetime_seconds"])),
            server_names=[str(name) for name in raw["server_names"]],
            client_identity=str(raw["client_identity"]),
        )


@dataclass(frozen=True)
class Authority:
    """The CA store as one consistent read."""

    signer: pki.Pair
    trusted: bytes
    profile: Profile
    phase: Phase = "steady"
    since: float = 0.0
    """When the phase began (seconds since the epoch)."""
    next: pki.Pair | None = None

    @property
    def bundle(self) -> list[x509.Certificate]:
        return pki.load_bundle(self.trusted)

    def files(self) -> dict[str, bytes]:
        files = {
            CERT: self.signer.certificate,
            KEY: self.signer.key,
            BUNDLE: self.trusted,
            PROFILE: self.profile.dumps(),
            ROTATION: json.dumps({"phase": self.phase, "since": self.since}).encode(),
        }
        if self.next is not None:
            files[NEXT_CERT], files[NEXT_KEY] = self.next.certificate, self.next.key
        return files


def parse_authority(files: dict[str, bytes]) -> Authority:
    try:
        signer = pki.Pair(files[CERT], files[KEY])
        profile = Profile.loads(files[PROFILE])
        state = json.loads(files.get(ROTATION, b'{"phase": "steady", "since": 0}'))
        phase = state["phase"]
        if phase not in ("steady", "trusting", "reissuing"):
            raise ValueError(f"unknown rotation phase {phase!r}")
        following = pki.Pair(files[NEXT_CERT], files[NEXT_KEY]) if NEXT_CERT in files else None
        authority = Authority(
            signer, files[BUNDLE], profile, phase, float(state["since"]), following
        )
        pki.validate(signer, authority.bundle, dates=False)
    except (KeyError, ValueError, TypeError, pki.InvalidPair) as exc:
        raise CertError(f"the CA store is damaged: {exc}") from exc
    if phase == "trusting" and following is None:
        raise CertError("the CA store is damaged: a rotation in progress lost its new CA")
    return authority


@dataclass
class Finding:
    store: str
    level: Literal["ok", "attention", "error"]
    message: str
    expires: datetime.datetime | None = None
    serial: str = ""
    details: dict[str, str] = field(default_factory=dict)
    issued: datetime.datetime | None = None
    """The certificate's notBefore: with `expires`, how much of its life is left."""


class Store(Protocol):
    """Where one Secret's files live: a secret-volume directory, or the Secret itself."""

    @property
    def where(self) -> str: ...

    def exists(self) -> bool: ...

    def current(self) -> str | None: ...

    def read(self) -> Version | None: ...

    def write(
        self,
        files: Mapping[str, bytes],
        check: Callable[[dict[str, bytes]], object] | None = None,
    ) -> str: ...


class CertDirectory:
    """The three stores, in DIR (`--dir`) or as Secrets in a namespace (`--kube-namespace`)."""

    def __init__(self, root: Path | None, stores: dict[str, Store] | None = None) -> None:
        self._root = root
        self.stores: dict[str, Store] = stores or {
            name: SecretVolume((root or Path(".")) / name) for name in (CA, SERVER, ENVOY)
        }
        self.where = str(root) if root is not None else self.stores[CA].where

    @property
    def root(self) -> Path:
        """The directory (only for a directory of stores, not for Secrets)."""
        assert self._root is not None, "the stores are Secrets, not a directory"
        return self._root

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One writer at a time (a CLI rotation and a server's rotator); the kernel drops
        the lock of a killed process. Secrets need none: a write carries the version it
        read, and a concurrent change makes it fail with 409 Conflict."""
        if self._root is None:
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def authority(self) -> Authority | None:
        version = self.stores[CA].read()
        return None if version is None else parse_authority(version.files)

    def write_authority(self, authority: Authority) -> None:
        def check(files: dict[str, bytes]) -> None:
            parse_authority(files)

        self.stores[CA].write(authority.files(), check)

    def leaf(self, which: str) -> dict[str, bytes]:
        version = self.stores[which].read()
        return {} if version is None else version.files

    def write_leaf(
        self, which: str, pair: pki.Pair, authority: Authority, trusted: bytes
    ) -> x509.Certificate:
        _, names, usage = authority.profile.leaf(which)

        def check(files: dict[str, bytes]) -> None:
            pki.validate(
                pki.Pair(files[CERT], files[KEY]), pki.load_bundle(files[BUNDLE]), usage, names
            )

        self.stores[which].write({CERT: pair.certificate, KEY: pair.key, BUNDLE: trusted}, check)
        return pair.cert


def new_authority(profile: Profile, common: str = "envoy-lifecycle-ca") -> Authority:
    signer = pki.issue_ca(common, profile.ca_lifetime, profile.algorithm)
    return Authority(signer, signer.certificate, profile)


def issue(authority: Authority, which: str) -> pki.Pair:
    common, names, usage = authority.profile.leaf(which)
    profile = authority.profile
    return pki.issue_leaf(
        authority.signer, common, names, usage, profile.leaf_lifetime, profile.algorithm
    )


def foreign(which: str, files: dict[str, bytes], authority: Authority) -> str | None:
    """Why a leaf store belongs to another CA than the CA store (ca/ replaced by another
    directory's), or None. Its certificate is signed by none of the CAs ca/ trusts, and it
    trusts none of them: no step of a CA rotation ever leaves a store like that, so
    re-issuing from this CA would switch every peer's trust at once."""
    if CERT not in files or BUNDLE not in files:
        return None
    try:
        cert = x509.load_pem_x509_certificate(files[CERT])
        trusted = pki.load_bundle(files[BUNDLE])
    except (ValueError, pki.InvalidPair):
        return None  # unreadable: repaired by re-issuing, as any broken leaf
    known = {ca.fingerprint(hashes.SHA256()) for ca in authority.bundle}
    if any(pki.issued_by(cert, ca) for ca in authority.bundle):
        return None
    if known & {ca.fingerprint(hashes.SHA256()) for ca in trusted}:
        return None
    return (
        f"{which}/tls.crt ({pki.serial_hex(cert)}) and its trust bundle belong to another CA"
        " than ca/: was ca/ replaced? Restore it, or start afresh with `certs init` in an"
        " empty directory"
    )


def check_leaf(
    which: str,
    files: dict[str, bytes],
    authority: Authority | None,
    at: datetime.datetime | None = None,
    dates: bool = True,
) -> x509.Certificate:
    """The leaf if it is servable as the profile says (raises InvalidPair saying why not)."""
    if CERT not in files or KEY not in files or BUNDLE not in files:
        raise pki.InvalidPair("no certificate stored")
    names: Sequence[str] = ()
    usage: pki.Usage | None = None
    if authority is not None:
        _, names, usage = authority.profile.leaf(which)
    return pki.validate(
        pki.Pair(files[CERT], files[KEY]),
        pki.load_bundle(files[BUNDLE]),
        usage,
        names,
        at,
        dates,
    )
