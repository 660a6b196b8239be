"""The model kept current one object at a time: a change costs what it touches.

A changed Ingress is read again alone; a changed Service or EndpointSlice reads again the
Ingresses that name it; a host is put together again only when an Ingress with routes or a
defaultBackend for it changed. `update` says which hosts, clusters and TLS settings changed,
so the translation rebuilds those alone. Building from nothing is the same `update` with
every object new (`build`): one code path, whichever way the objects came.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from xds_server.model.backends import SERVICE_NAME_LABEL, Resolved
from xds_server.model.gateway import KINDS as GATEWAY_KINDS
from xds_server.model.gateway import GatewayInputs, GatewaySettings, build_gateways
from xds_server.model.gateway.build import CompileMemo
from xds_server.model.ingress import (
    IngressPart,
    age_order,
    claim_tls_hosts,
    default_class,
    first_of_each_path,
    ingress_part,
    our_class,
    services_named,
)
from xds_server.model.secrets import Checked, add_secrets
from xds_server.model.types import Backend, Host, Model, Rejected, Route, describe
from xds_server.sources.objects import KubeObject

log = logging.getLogger("xds_server.model")

Key = tuple[str, str, str]
"""(kind, namespace, name) of an object."""
Named = tuple[str, str]
"""(namespace, name) of an object of a known kind."""
Aged = tuple[tuple[str, str, str], Named]
"""An Ingress with its age_order: lists of these sorted are lists in age order."""


@dataclass
class Dirty:
    """What one update changed in the model, for the translation to rebuild."""

    hosts: set[str] = field(default_factory=set)
    clusters: set[str] = field(default_factory=set)
    tls: bool = False
    """The TLS bindings or their secrets (the HTTPS listener and the SDS secrets)."""
    gateway: bool = False
    """The Gateway API part was built again."""


class ModelState:
    """The model of the objects seen so far; `update` applies a change to them."""

    def __init__(self, ingress_class: str | None, gateway: GatewaySettings | None = None) -> None:
        self.ingress_class = ingress_class
        self.gateway = gateway or GatewaySettings()
        self._gateway_objects: dict[Key, KubeObject] = {}
        self._gateway_clusters: dict[str, Backend] = {}
        self._gateway_memo: CompileMemo = {}
        self.model = Model()
        self._ingresses: dict[Named, KubeObject] = {}
        self._services: dict[Named, KubeObject] = {}
        self._slices: dict[Named, dict[Key, dict[str, Any]]] = {}  # by the Service they serve
        self._slice_service: dict[Key, Named] = {}
        self._classes: dict[str, KubeObject] = {}
        self._secrets: dict[Key, KubeObject] = {}
        self._default_class: str | None = None
        self._parts: dict[Named, IngressPart] = {}
        self._ages: dict[Named, tuple[str, str, str]] = {}
        self._rejected: dict[Named, str] = {}
        self._needs: dict[Named, set[Named]] = {}  # Service -> the Ingresses naming it
        self._named_by: dict[Named, set[Named]] = {}  # Ingress -> the Services it names
        self._routes_of: dict[str, list[Aged]] = {}  # host -> Ingresses with routes there
        self._defaults: list[Aged] = []  # Ingresses with a defaultBackend
        self._with_tls: list[Aged] = []
        self._cluster_users: dict[str, int] = {}
        self._host_errors: dict[str, list[str]] = {}
        self._tls_errors: list[str] = []
        self._checked_secrets: Checked = {}

    def update(self, changes: Mapping[Key, KubeObject | None]) -> Dirty:
        """Apply changed objects (None: deleted); the model is then that of all objects."""
        ingresses, backends, tls = self._take(changes)
        for named in backends:
            ingresses |= self._needs.get(named, set())
        dirty = Dirty(tls=tls)
        resolved: Resolved = {}
        for named in sorted(ingresses):
            self._withdraw(named, dirty)
            self._admit(named, resolved, dirty)
        for host in dirty.hosts:
            self._rebuild_host(host)
        if dirty.tls:
            self._rebuild_tls()
        if self._gateway_touched(changes):
            self._rebuild_gateway(dirty)
        self._collect_errors()
        return dirty

    def _gateway_touched(self, changes: Mapping[Key, KubeObject | None]) -> bool:
        """Gateway API objects changed, or the Services, slices and Secrets they read."""
        touched = False
        for key, obj in changes.items():
            if key[0] in ("Service", "EndpointSlice", "ReferenceGrant"):
                self._gateway_memo.clear()  # what routes resolve to may have changed
            if key[0] in GATEWAY_KINDS:
                _store(self._gateway_objects, key, obj)
                touched = True
            elif key[0] in ("Service", "EndpointSlice", "Secret"):
                touched = touched or bool(self._gateway_objects)
        return touched

    def _rebuild_gateway(self, dirty: Dirty) -> None:
        """The whole Gateway API part again (routes of every Gateway read together: their
        precedence and status depend on each other); its clusters counted like an
        Ingress' so a cluster both use lives while either does."""
        inputs = GatewayInputs(self._gateway_objects, self.gateway.controller,
                               self.gateway.pool, self.gateway.envoy_address,
                               self.gateway.reserved, self.gateway.merge,
                               self.gateway.route_budget)  # fmt: skip
        slices = {named: list(found.values()) for named, found in self._slices.items()}
        secrets = {(key[1], key[2]): obj for key, obj in self._secrets.items()}
        part = build_gateways(inputs, self._services, slices, secrets, self._gateway_memo)
        before, after = self._gateway_clusters, part.upstreams
        for cluster in before.keys() - after.keys():
            self._cluster_users[cluster] -= 1
            if not self._cluster_users[cluster]:
                del self._cluster_users[cluster], self.model.clusters[cluster]
            dirty.clusters.add(cluster)
        for cluster, backend in after.items():
            if cluster not in before:
                self._cluster_users[cluster] = self._cluster_users.get(cluster, 0) + 1
            if self.model.clusters.get(cluster) != backend:
                self.model.clusters[cluster] = backend
                dirty.clusters.add(cluster)
        self._gateway_clusters = dict(after)
        self.model.gateway = part
        dirty.gateway = True

    def _take(
        self, changes: Mapping[Key, KubeObject | None]
    ) -> tuple[set[Named], set[Named], bool]:
        """Store the changed objects; the Ingresses and Services they touch, and whether
        Secrets changed."""
        ingresses: set[Named] = set()
        backends: set[Named] = set()
        classes = tls = False
        for key, obj in changes.items():
            kind, named = key[0], (key[1], key[2])
            if kind == "Ingress":
                _store(self._ingresses, named, obj)
                ingresses.add(named)
            elif kind == "Service":
                _store(self._services, named, obj)
                backends.add(named)
            elif kind == "EndpointSlice":
                backends |= self._take_slice(key, obj)
            elif kind == "IngressClass":
                _store(self._classes, key[2], obj)
                classes = True
            elif kind == "Secret":
                _store(self._secrets, key, obj)
                tls = True
        if classes:
            default = default_class(self._classes.values())
            if default != self._default_class and self.ingress_class is not None:
                ingresses |= self._ingresses.keys()  # which Ingresses are ours may change
            self._default_class = default
        return ingresses, backends, tls

    def _take_slice(self, key: Key, obj: KubeObject | None) -> set[Named]:
        touched = set()
        before = self._slice_service.pop(key, None)
        if before is not None:
            self._slices[before].pop(key, None)
            touched.add(before)
        if obj is not None:
            labels = obj.body.get("metadata", {}).get("labels") or {}
            service = labels.get(SERVICE_NAME_LABEL)
            if service:
                named = (obj.namespace, str(service))
                self._slices.setdefault(named, {})[key] = obj.body
                self._slice_service[key] = named
                touched.add(named)
        return touched

    def _withdraw(self, named: Named, dirty: Dirty) -> None:
        """Take an Ingress' part out of the model (if it had one)."""
        self._rejected.pop(named, None)
        for service in self._named_by.pop(named, set()):
            users = self._needs[service]
            users.discard(named)
            if not users:
                del self._needs[service]
        part = self._parts.pop(named, None)
        if part is None:
            return
        aged = (self._ages[named], named)
        for host in part.by_host:
            self._routes_of[host].remove(aged)
            dirty.hosts.add(host)
        if part.default is not None:
            self._defaults.remove(aged)
            dirty.hosts |= {*part.by_host, "*"}
        if part.tls:
            self._with_tls.remove(aged)
            dirty.tls = True
        for cluster in part.upstreams:
            self._cluster_users[cluster] -= 1
            if not self._cluster_users[cluster]:
                del self._cluster_users[cluster], self.model.clusters[cluster]
                dirty.clusters.add(cluster)
        self.model.served.discard(named)

    def _admit(self, named: Named, resolved: Resolved, dirty: Dirty) -> None:
        """Put an Ingress' part (as of now) into the model, or record why it cannot be."""
        ingress = self._ingresses.get(named)
        self._ages.pop(named, None)
        if ingress is None or not our_class(ingress, self.ingress_class, self._default_class):
            return
        age = self._ages[named] = age_order(ingress)
        needs = self._named_by[named] = services_named(ingress)
        for service in needs:  # a rejected one too: it may be fine once they change
            self._needs.setdefault(service, set()).add(named)
        try:
            part = self._part(ingress, needs, resolved)
        except Rejected as exc:
            self._rejected[named] = f"{describe(ingress)}: {exc}"
            return
        self._parts[named] = part
        aged = (age, named)
        for host in part.by_host:
            bisect.insort(self._routes_of.setdefault(host, []), aged)
            dirty.hosts.add(host)
        if part.default is not None:
            bisect.insort(self._defaults, aged)
            dirty.hosts |= {*part.by_host, "*"}
        if part.tls:
            bisect.insort(self._with_tls, aged)
            dirty.tls = True
        for cluster, backend in part.upstreams.items():
            self._cluster_users[cluster] = self._cluster_users.get(cluster, 0) + 1
            if self.model.clusters.get(cluster) != backend:
                self.model.clusters[cluster] = backend
                dirty.clusters.add(cluster)
        self.model.served.add(named)

    def _part(self, ingress: KubeObject, needs: set[Named], resolved: Resolved) -> IngressPart:
        slices = {named: list(self._slices.get(named, {}).values()) for named in needs}
        try:
            return ingress_part(ingress, self._services, slices, resolved)
        except Rejected:
            raise
        except Exception as exc:  # a shape the sources let through: this object only
            log.exception("model: %s/%s", ingress.namespace, ingress.name)
            raise Rejected(f"cannot be used ({type(exc).__name__}: {exc})") from exc

    def _rebuild_host(self, name: str) -> None:
        """A host's routes from every Ingress with rules for it, in precedence then age;
        its defaultBackend from the oldest such Ingress that has one (for `*`: the oldest
        Ingress with one at all). A later claim on either is named in the errors."""
        users = self._routes_of.get(name, [])
        routes: list[Route] = []
        for _, named in users:
            routes += self._parts[named].by_host[name]
        errors: list[str] = []
        if len(users) > 1:  # each part's routes come sorted, without duplicates
            routes.sort(key=lambda r: r.precedence)  # stable: the oldest first
            routes = first_of_each_path(name, routes, errors)
        default = None
        claims = self._defaults if name == "*" else users
        for _, named in claims:
            claim = self._parts[named].default
            if claim is None:
                continue
            if default is None:
                default = claim
            elif default.origin != claim.origin:
                where = "requests matching no host" if name == "*" else f"host {name}"
                errors.append(
                    f"{claim.origin}: defaultBackend not used for {where}: {default.origin}"
                    " is older and has one"
                )
        if not users:
            self._routes_of.pop(name, None)
        _store(self._host_errors, name, errors or None)
        if routes or default is not None:
            self.model.hosts[name] = Host(name, routes, default)
        else:
            self.model.hosts.pop(name, None)

    def _rebuild_tls(self) -> None:
        """Bindings in age order, one certificate per SNI name, then their secrets."""
        model = self.model
        errors, model.errors = model.errors, []
        model.tls = [b for _, named in self._with_tls for b in self._parts[named].tls]
        model.secrets = {}
        claim_tls_hosts(model)
        add_secrets(model, list(self._secrets.values()), self._checked_secrets)
        self._tls_errors, model.errors = model.errors, errors

    def _collect_errors(self) -> None:
        rejected = sorted(self._rejected, key=lambda named: (self._ages[named], named))
        self.model.errors = [self._rejected[named] for named in rejected]
        for host in sorted(self._host_errors):
            self.model.errors += self._host_errors[host]
        self.model.errors += self._tls_errors
        if self.model.gateway is not None:
            self.model.errors += self.model.gateway.errors


def _store(table: dict[Any, Any], key: Any, value: Any) -> None:
    if value is None:
        table.pop(key, None)
    else:
        table[key] = value


def build(
    objects: Iterable[KubeObject],
    ingress_class: str | None,
    gateway: GatewaySettings | None = None,
) -> Model:
    """The model for a set of objects (the first of two with the same key counts);
    rejected objects are listed in `model.errors`."""
    changes: dict[Key, KubeObject | None] = {}
    for obj in objects:
        changes.setdefault(obj.key, obj)
    state = ModelState(ingress_class, gateway)
    state.update(changes)
    return state.model
