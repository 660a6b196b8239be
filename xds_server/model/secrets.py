"""`kubernetes.io/tls` Secrets -> the certificates the model's TLS bindings name.

A Secret Envoy would refuse (garbage PEM, a key that is not the certificate's, a key type
Envoy does not serve) is rejected here with its name: served, it would make every proxy
refuse the whole HTTPS listener, every other host's certificate with it.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from xds_server.certs import pki
from xds_server.model.types import Model, TlsSecret, describe
from xds_server.sources.objects import KubeObject

SERVED_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
MIN_RSA_BITS = 2048
"""What Envoy (BoringSSL) loads as a server certificate: RSA of 2048 bits or more, ECDSA on
P-256, P-384 or P-521."""

Checked = dict[int, tuple[dict[str, Any], TlsSecret | str]]
"""Secret bodies already judged (by identity; the body is kept so the id stays its own)."""


def add_secrets(model: Model, secrets: list[KubeObject], checked: Checked | None = None) -> None:
    wanted = {binding.secret for binding in model.tls}
    checked = {} if checked is None else checked
    for obj in secrets:
        name = f"{obj.namespace}/{obj.name}"
        if name not in wanted:
            continue
        found = checked.get(id(obj.body))
        if found is None or found[0] is not obj.body:
            found = checked[id(obj.body)] = (obj.body, tls_secret_of(obj))
        if isinstance(found[1], str):
            model.errors.append(f"{describe(obj)}: {found[1]}")
        else:
            model.secrets[name] = found[1]
    alive = {id(obj.body) for obj in secrets}
    for gone in set(checked) - alive:
        del checked[gone]
    for binding in model.tls:
        if binding.secret not in model.secrets:
            model.errors.append(
                f"{binding.origin}: TLS secret {binding.secret} missing or unusable:"
                " its hosts are not served over TLS"
            )
    model.tls = [b for b in model.tls if b.secret in model.secrets]


def tls_secret_of(obj: KubeObject) -> TlsSecret | str:
    """The secret, or why it cannot be served."""
    body = obj.body
    data = body.get("data") or {}
    if body.get("type") != "kubernetes.io/tls" or "tls.crt" not in data or "tls.key" not in data:
        return "not a kubernetes.io/tls Secret with tls.crt and tls.key"
    try:
        pair = pki.Pair(_base64(data["tls.crt"]), _base64(data["tls.key"]))
    except (binascii.Error, ValueError):
        return "tls.crt or tls.key is not base64"
    try:
        cert = pki.matching(pair)
    except pki.InvalidPair as exc:
        return str(exc)
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        return f"an RSA key of {key.key_size} bits (Envoy serves {MIN_RSA_BITS} or more)"
    if isinstance(key, ec.EllipticCurvePublicKey) and not isinstance(key.curve, SERVED_CURVES):
        return f"an ECDSA key on {key.curve.name} (Envoy serves P-256, P-384 and P-521)"
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return f"a {type(key).__name__} key (Envoy serves RSA and ECDSA)"
    name = f"{obj.namespace}/{obj.name}"
    return TlsSecret(name, pair.certificate, pair.key, origin=describe(obj))


def _base64(text: str) -> bytes:
    """As the API server decodes it: line breaks are ignored, anything else must be base64."""
    return base64.b64decode("".join(text.split()), validate=True)
