"""Issuing and checking the mTLS certificates: a long-lived CA, short-lived leaves.

Unlike Contour's certgen (RSA only, one-year leaves, a new CA each run, serials from the
clock), keys are ECDSA P-256 unless RSA is asked for, serials are 128 random bits, leaves
carry exactly the usages their side needs, and every pair is checked (key, chain, usage,
names, dates) before anyone may serve it.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Algorithm = Literal["ecdsa-p256", "rsa-2048", "rsa-3072"]
ALGORITHMS: tuple[Algorithm, ...] = ("ecdsa-p256", "rsa-2048", "rsa-3072")
Usage = Literal["server", "client"]
MAX_SKEW = datetime.timedelta(minutes=5)
"""Leaves start a little in the past so a peer whose clock is behind accepts them."""


class InvalidPair(Exception):
    """A certificate and key that must not be served (the message says why, in one line)."""


@dataclass(frozen=True)
class Pair:
    """A PEM certificate and its PEM private key."""

    certificate: bytes
    key: bytes

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.certificate)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def new_key(algorithm: Algorithm) -> CertificateIssuerPrivateKeyTypes:
    if algorithm == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(65537, int(algorithm.removeprefix("rsa-")))


def key_pem(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def random_serial() -> int:
    """128 random bits (never zero): unguessable and unique without any state."""
    return secrets.randbits(128) or 1


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _validity(
    builder: x509.CertificateBuilder, lifetime: datetime.timedelta
) -> x509.CertificateBuilder:
    start = now()
    skew = min(MAX_SKEW, lifetime / 10)
    return builder.not_valid_before(start - skew).not_valid_after(start + lifetime)


def issue_ca(common: str, lifetime: datetime.timedelta, algorithm: Algorithm) -> Pair:
    key = new_key(algorithm)
    public = key.public_key()
    cert = (
        _validity(x509.CertificateBuilder(), lifetime)
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(public)
        .serial_number(random_serial())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signing=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Pair(cert_pem(cert), key_pem(key))


def _key_usage(signing: bool = False, rsa_key: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not signing,
        content_commitment=False,
        key_encipherment=rsa_key and not signing,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signing,
        crl_sign=signing,
        encipher_only=False,
        decipher_only=False,
    )


def general_names(names: Sequence[str]) -> list[x509.GeneralName]:
    """DNS names, IP addresses and URIs (anything with `://`, such as a SPIFFE identity)."""
    result: list[x509.GeneralName] = []
    for name in names:
        if "://" in name:
            result.append(x509.UniformResourceIdentifier(name))
            continue
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(name))
    return result


def issue_leaf(
    ca: Pair,
    common: str,
    names: Sequence[str],
    usage: Usage,
    lifetime: datetime.timedelta,
    algorithm: Algorithm,
) -> Pair:
    ca_cert = ca.cert
    ca_key = serialization.load_pem_private_key(ca.key, None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise InvalidPair("the CA key is neither ECDSA nor RSA")
    key = new_key(algorithm)
    public = key.public_key()
    eku = ExtendedKeyUsageOID.SERVER_AUTH if usage == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (
        _validity(x509.CertificateBuilder(), lifetime)
        .subject_name(_name(common))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(random_serial())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(rsa_key=isinstance(public, rsa.RSAPublicKey)), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectAlternativeName(general_names(names)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Pair(cert_pem(cert), key_pem(key))


def common_name(cert: x509.Certificate) -> str:
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def names_of(cert: x509.Certificate) -> list[str]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    found: list[str] = [str(v) for v in sans.get_values_for_type(x509.DNSName)]
    found += [str(v) for v in sans.get_values_for_type(x509.IPAddress)]
    found += [str(v) for v in sans.get_values_for_type(x509.UniformResourceIdentifier)]
    return found


def usage_of(cert: x509.Certificate) -> Usage:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return "server"
    return "client" if ExtendedKeyUsageOID.CLIENT_AUTH in eku else "server"


def serial_hex(cert: x509.Certificate) -> str:
    return f"{cert.serial_number:x}"


def load_bundle(pem: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise InvalidPair(f"unreadable CA bundle: {exc}") from exc


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def matching(pair: Pair) -> x509.Certificate:
    """The certificate, if both PEM blocks parse and the key is the certificate's own."""
    try:
        cert = pair.cert
        key = serialization.load_pem_private_key(pair.key, None)
    except (ValueError, TypeError) as exc:
        why = str(exc).splitlines()[0].split(". See ")[0]
        raise InvalidPair(f"unreadable certificate or key: {why}") from exc
    if key.public_key() != cert.public_key():
        raise InvalidPair(f"the key does not match certificate {serial_hex(cert)}")
    return cert


def validate(
    pair: Pair,
    bundle: Sequence[x509.Certificate],
    usage: Usage | None = None,
    required_names: Sequence[str] = (),
    at: datetime.datetime | None = None,
    dates: bool = True,
) -> x509.Certificate:
    """The leaf, if the pair may be served: key matches, chains to the bundle, names, and
    (unless `dates` is False, for callers that judge expiry apart) valid `at` (now)."""
    cert = matching(pair)
    moment = at or now()
    if dates and not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
        raise InvalidPair(
            f"certificate {serial_hex(cert)} is valid only from "
            f"{cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to "
            f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
        )
    if not any(issued_by(cert, ca) for ca in bundle):
        raise InvalidPair(f"certificate {serial_hex(cert)} is not signed by a trusted CA")
    if usage is not None and not is_ca(cert) and usage_of(cert) != usage:
        raise InvalidPair(f"certificate {serial_hex(cert)} is not for {usage} authentication")
    missing = sorted(set(required_names) - set(names_of(cert)))
    if missing:
        raise InvalidPair(f"certificate {serial_hex(cert)} lacks the names {', '.join(missing)}")
    return cert


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
