"""References out of a Gateway or an HTTPRoute: Services as backends, Secrets as
certificates; another namespace's only where a ReferenceGrant in that namespace allows it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from xds_server.model.backends import Resolved, resolve_backend
from xds_server.model.gateway.types import GROUP, GatewayPart, Named, spec_of
from xds_server.model.secrets import tls_secret_of
from xds_server.model.types import Rejected
from xds_server.sources.objects import KubeObject

CORE = ("", "core")
Problem = tuple[str, str]
"""(the spec's reason, a message naming the reference)."""


@dataclass
class Lookup:
    """What references resolve against in one build."""

    grants: list[KubeObject]
    services: dict[Named, KubeObject]
    slices: dict[Named, list[dict[str, Any]]]
    secrets: dict[Named, KubeObject]
    resolved: Resolved


def granted(
    grants: Iterable[KubeObject], source: KubeObject, kind: str, namespace: str, name: str
) -> bool:
    """A ReferenceGrant in `namespace` lets objects of the source's kind and namespace refer
    to the core object `kind/name` (a `to` without a name allows every one of that kind)."""
    for grant in grants:
        if grant.namespace != namespace:
            continue
        spec = spec_of(grant)
        sources = [f for f in spec.get("from") or [] if isinstance(f, dict)]
        targets = [t for t in spec.get("to") or [] if isinstance(t, dict)]
        if not any(
            f.get("group") == GROUP
            and f.get("kind") == source.kind
            and f.get("namespace") == source.namespace
            for f in sources
        ):
            continue
        if any(
            t.get("group", "") in CORE
            and t.get("kind") == kind
            and t.get("name") in ("", None, name)
            for t in targets
        ):
            return True
    return False


def _target(
    source: KubeObject, kind: str, ref: dict[str, Any], lookup: Lookup, where: str
) -> tuple[str, str, Problem | None]:
    """The namespace and name a reference names, and RefNotPermitted when it crosses into
    another namespace that grants the source no access."""
    namespace = str(ref.get("namespace") or source.namespace)
    name = str(ref.get("name"))
    if namespace != source.namespace and not granted(lookup.grants, source, kind, namespace, name):
        return namespace, name, ("RefNotPermitted", f"{where}: no ReferenceGrant in {namespace}")
    return namespace, name, None


def backend(
    route: KubeObject, ref: dict[str, Any], lookup: Lookup, part: GatewayPart, where: str
) -> tuple[str | None, Problem | None]:
    """A backendRef's cluster (its endpoints put in the part), or why it cannot be used."""
    if ref.get("group", "") not in CORE or ref.get("kind", "Service") != "Service":
        return None, ("InvalidKind", f"{where}: only Services are supported backends")
    namespace, name, refused = _target(route, "Service", ref, lookup, where)
    if refused is not None:
        return None, refused
    if ref.get("port") is None:
        return None, ("BackendNotFound", f"{where}: a Service backend needs a port")
    wanted = {"service": {"name": name, "port": {"number": int(ref["port"])}}}
    try:
        upstream, backend = resolve_backend(
            namespace, wanted, lookup.services, lookup.slices, where, lookup.resolved
        )
    except Rejected as exc:
        return None, ("BackendNotFound", str(exc))
    part.upstreams[upstream.cluster] = backend
    return upstream.cluster, None


def certificate(
    gateway: KubeObject, ref: dict[str, Any], lookup: Lookup, part: GatewayPart, where: str
) -> tuple[str | None, Problem | None]:
    """A certificateRef's SDS secret name (the secret put in the part), or why not."""
    if ref.get("group", "") not in CORE or ref.get("kind", "Secret") != "Secret":
        return None, ("InvalidCertificateRef", f"{where}: only core Secrets are certificates")
    namespace, name, refused = _target(gateway, "Secret", ref, lookup, where)
    if refused is not None:
        return None, refused
    obj = lookup.secrets.get((namespace, name))
    if obj is None:
        return None, ("InvalidCertificateRef", f"{where}: Secret {namespace}/{name} not found")
    found = tls_secret_of(obj)
    if isinstance(found, str):
        return None, ("InvalidCertificateRef", f"{where}: Secret {namespace}/{name}: {found}")
    sds = f"gateway/{namespace}/{name}"
    part.secrets[sds] = found
    return sds, None
