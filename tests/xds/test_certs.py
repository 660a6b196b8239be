"""`xds-server certs`: what is issued, how it is stored, and that no interruption (a reader
racing a swap, SIGKILL anywhere in a rotation) leaves a pair that would fail a handshake."""

from __future__ import annotations

import datetime
import random
import shutil
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from bench.lab.certs import (
    CERTS,
    assert_consistent,
    certs_cli,
    init_certs,
    stored,
    stored_serial,
)
from xds_server.certs import pki
from xds_server.certs.directory import CA, DEFAULT_IDENTITY, Authority, CertDirectory
from xds_server.certs.rotation import Rotator, renew_time
from xds_server.certs.secret_volume import DATA, SecretVolume

pytestmark = pytest.mark.timeout(120)


def authority_of(certs: CertDirectory) -> Authority:
    authority = certs.authority()
    assert authority is not None
    return authority


def test_init_issues_a_long_lived_ca_and_short_lived_leaves_with_the_right_usages(
    tmp_path: Path,
) -> None:
    certs = init_certs(tmp_path / "certs", "--namespace", "edge", "--leaf-lifetime", "3d")
    authority = authority_of(certs)
    assert authority is not None
    ca = authority.signer.cert
    server, envoy = stored(certs, "server"), stored(certs, "envoy")
    for cert in (ca, server, envoy):
        public = cert.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert public.curve.name == "secp256r1"
        assert 64 < cert.serial_number.bit_length() <= 128
    assert len({ca.serial_number, server.serial_number, envoy.serial_number}) == 3
    assert ca.not_valid_after_utc - ca.not_valid_before_utc > datetime.timedelta(days=4 * 365)
    lifetime = server.not_valid_after_utc - pki.now()
    assert datetime.timedelta(days=2.9) < lifetime <= datetime.timedelta(days=3)
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    for cert, usage in (
        (server, ExtendedKeyUsageOID.SERVER_AUTH),
        (envoy, ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [usage]
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert pki.issued_by(cert, ca)
    assert pki.names_of(server) == [
        "xds-server",
        "xds-server.edge",
        "xds-server.edge.svc",
        "xds-server.edge.svc.cluster.local",
        "127.0.0.1",
    ]
    assert pki.names_of(envoy) == [DEFAULT_IDENTITY]
    for store in ("ca", "server", "envoy"):
        key = (certs.root / store / "tls.key").resolve()
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert (certs.root / store / DATA).is_symlink()


def test_rsa_by_flag_and_init_again_keeps_the_ca(tmp_path: Path) -> None:
    certs = init_certs(tmp_path / "certs", "--algorithm", "rsa-2048")
    assert isinstance(stored(certs, "server").public_key(), rsa.RSAPublicKey)
    first = authority_of(certs)
    again = init_certs(tmp_path / "certs", "--algorithm", "rsa-2048")
    second = authority_of(again)
    assert first is not None
    assert second is not None
    assert first.signer.certificate == second.signer.certificate  # trust survives re-runs
    renamed = init_certs(tmp_path / "certs", "--algorithm", "rsa-2048", "--san", "xds.example")
    assert "xds.example" in pki.names_of(stored(renamed, "server"))  # the profile changed
    assert authority_of(renamed).signer.certificate == first.signer.certificate


def test_a_reader_never_sees_a_pair_from_two_versions(tmp_path: Path) -> None:
    """One thread rotates as fast as it can; another reads the store the way the server
    and Envoy do. Every read must be a matching pair."""
    certs = init_certs(tmp_path / "certs")
    rotator = Rotator(certs, propagation_delay=0)
    stop = threading.Event()
    reads, problems = 0, []

    def read() -> None:
        nonlocal reads
        volume = SecretVolume(certs.root / "server")
        while not stop.is_set():
            version = volume.read()
            assert version is not None
            try:
                pki.validate(
                    pki.Pair(version.files["tls.crt"], version.files["tls.key"]),
                    pki.load_bundle(version.files["ca.crt"]),
                )
            except pki.InvalidPair as exc:
                problems.append(str(exc))
            reads += 1

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(60):
            rotator.step(force=True)
    finally:
        stop.set()
        reader.join()
    assert problems == []
    assert reads > 60
    versions = [p for p in (certs.root / "server").iterdir() if p.name.startswith("..2")]
    assert len(versions) <= 2  # old versions are collected, the previous one is kept


def test_renewal_comes_at_two_thirds_of_the_lifetime_with_jitter(tmp_path: Path) -> None:
    certs = init_certs(tmp_path / "certs", "--leaf-lifetime", "9d")
    before = stored_serial(certs, "envoy")
    cert = stored(certs, "envoy")
    due = renew_time(cert)
    start = cert.not_valid_before_utc
    span = cert.not_valid_after_utc - start
    assert start + span * (2 / 3 - 0.1) <= due <= start + span * 2 / 3
    first_due = min(due, renew_time(stored(certs, "server")))  # jitter differs per serial
    early = Rotator(certs, 0, clock=lambda: first_due - datetime.timedelta(minutes=1)).step()
    assert early.actions == []
    assert stored_serial(certs, "envoy") == before
    assert early.wake is not None
    assert early.wake <= first_due
    late = Rotator(certs, 0, clock=lambda: due + datetime.timedelta(minutes=1)).step()
    assert any(a.startswith("envoy: new certificate") for a in late.actions)
    assert stored_serial(certs, "envoy") != before


def test_the_ca_rotates_in_three_steps_each_after_the_propagation_delay(tmp_path: Path) -> None:
    certs = init_certs(tmp_path / "certs")
    now = [pki.now()]
    rotator = Rotator(certs, propagation_delay=60, clock=lambda: now[0])
    old = authority_of(certs).signer.cert
    rotator.step(rotate_ca=True)
    assert authority_of(certs).phase == "trusting"
    assert len(pki.load_bundle(certs.leaf("envoy")["ca.crt"])) == 2
    assert pki.issued_by(stored(certs, "server"), old)  # leaves not yet from the new CA
    assert rotator.step().actions == []  # nothing moves before the delay
    now[0] += datetime.timedelta(seconds=61)
    rotator.step()
    new = authority_of(certs).signer.cert
    assert new != old
    assert authority_of(certs).phase == "reissuing"
    assert pki.issued_by(stored(certs, "server"), new)
    assert len(pki.load_bundle(certs.leaf("server")["ca.crt"])) == 2
    assert_consistent(certs)
    now[0] += datetime.timedelta(seconds=61)
    rotator.step()
    assert authority_of(certs).phase == "steady"
    assert pki.load_bundle(certs.leaf("envoy")["ca.crt"]) == [new]
    assert_consistent(certs)


def test_sigkill_anywhere_in_a_rotation_leaves_a_consistent_store(tmp_path: Path) -> None:
    """Leaves and a CA rotation are killed with SIGKILL at random moments, 25 times. After
    every kill each store holds a valid pair both sides would accept, and at the end an
    ordinary rotation finishes what was interrupted."""
    certs = init_certs(tmp_path / "certs")
    rng = random.Random(7)
    killed_mid_ca = 0
    for _ in range(25):
        proc = subprocess.Popen(
            [*CERTS, "rotate", "--dir", str(certs.root), "--force", "--ca",
             "--propagation-delay", "0.05"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(rng.uniform(0.15, 0.6))  # the interpreter starts in ~0.15 s
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert_consistent(certs)
        killed_mid_ca += authority_of(certs).phase != "steady"
        check = certs_cli("check", "--dir", str(certs.root))
        assert check.returncode == 0, check.stdout + check.stderr
    assert killed_mid_ca > 0  # the kills did land inside CA rotations
    finish = certs_cli("rotate", "--dir", str(certs.root), "--propagation-delay", "0.05")
    assert finish.returncode == 0, finish.stderr
    assert authority_of(certs).phase == "steady"
    forced = certs_cli("rotate", "--dir", str(certs.root), "--force")
    assert forced.returncode == 0
    assert "server: new certificate" in forced.stdout
    assert_consistent(certs)
    leftovers = [p for p in (certs.root / "server").iterdir() if p.name.startswith("..2")]
    assert len(leftovers) <= 2


def test_check_fails_loudly_on_an_expired_or_mismatched_pair(tmp_path: Path) -> None:
    certs = init_certs(tmp_path / "certs", "--leaf-lifetime", "2s")
    time.sleep(2.2)
    expired = certs_cli("check", "--dir", str(certs.root))
    assert expired.returncode == 1
    assert "server  ERROR" in expired.stdout
    assert "EXPIRED" in expired.stdout
    other = init_certs(tmp_path / "other")
    files = certs.leaf("envoy")
    files["tls.key"] = other.leaf("envoy")["tls.key"]
    certs.stores["envoy"].write(files)  # someone else's write: no check
    mismatched = certs_cli("check", "--dir", str(certs.root))
    assert mismatched.returncode == 1
    assert "the key does not match" in mismatched.stdout


def test_certs_cli_mistakes_are_one_line(tmp_path: Path) -> None:
    missing = certs_cli("rotate", "--dir", str(tmp_path / "nothing"))
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1
    assert "certs init" in missing.stderr
    bad = certs_cli("init", "--dir", str(tmp_path), "--leaf-lifetime", "soon")
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1
    damaged = tmp_path / "damaged"
    SecretVolume(damaged / CA).write({"tls.crt": b"junk"})
    result = certs_cli("rotate", "--dir", str(damaged))
    assert result.returncode == 1
    assert "damaged" in result.stderr
    assert result.stderr.count("\n") == 1
    assert CertDirectory(damaged).stores[CA].current() is not None


def test_a_ca_replaced_by_another_directorys_is_an_error_and_nothing_is_reissued(
    tmp_path: Path,
) -> None:
    ours, theirs = init_certs(tmp_path / "ours"), init_certs(tmp_path / "theirs")
    (ours.root / "ca").rename(tmp_path / "ca.ours")
    shutil.copytree(theirs.root / "ca", ours.root / "ca", symlinks=True)
    before = {which: stored_serial(ours, which) for which in ("server", "envoy")}
    check = certs_cli("check", "--dir", str(ours.root))
    assert check.returncode != 0
    assert "belong to another CA than ca/" in check.stdout + check.stderr
    rotate = certs_cli("rotate", "--force", "--dir", str(ours.root))
    assert rotate.returncode != 0
    assert "Traceback" not in rotate.stderr
    assert "nothing was changed" in rotate.stderr
    assert {which: stored_serial(ours, which) for which in ("server", "envoy")} == before
