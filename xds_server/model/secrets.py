"""`kubernetes.io/tls` Secrets -> the certificates the model's TLS bindings name."""

from __future__ import annotations

import base64
import binascii

from xds_server.model.types import Model, TlsSecret, describe
from xds_server.sources.objects import KubeObject


def add_secrets(model: Model, secrets: list[KubeObject]) -> None:
    wanted = {binding.secret for binding in model.tls}
    for obj in secrets:
        name = f"{obj.namespace}/{obj.name}"
        if name not in wanted:
            continue
        data = obj.body.get("data") or {}
        if (
            obj.body.get("type") != "kubernetes.io/tls"
            or "tls.crt" not in data
            or "tls.key" not in data
        ):
            model.errors.append(
                f"{describe(obj)}: not a kubernetes.io/tls Secret with tls.crt and tls.key"
            )
            continue
        try:
            model.secrets[name] = TlsSecret(
                name, base64.b64decode(data["tls.crt"]), base64.b64decode(data["tls.key"])
            )
        except (binascii.Error, TypeError):
            model.errors.append(f"{describe(obj)}: tls.crt or tls.key is not base64")
    for binding in model.tls:
        if binding.secret not in model.secrets:
            model.errors.append(
                f"TLS secret {binding.secret} not found: its hosts are not served over TLS"
            )
    model.tls = [b for b in model.tls if b.secret in model.secrets]
