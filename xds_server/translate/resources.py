"""Model -> Envoy resources, kept current: only what the model says changed is translated
again (a changed host is its two virtual hosts, whatever the number of routes elsewhere).

The pieces live by kind (listeners, routes, clusters); this module puts them together, by
type URL and name. The same model always gives the same messages, however it was reached.
"""

from __future__ import annotations

from google.protobuf.message import Message

from xds_server.model.state import Dirty
from xds_server.model.types import Model
from xds_server.translate.clusters import cluster, load_assignment
from xds_server.translate.gateway import HostMemo, gateway_resources
from xds_server.translate.listeners import (
    HTTP,
    HTTPS,
    EnvoyPorts,
    http_listener,
    https_listener,
    tls_secret,
)
from xds_server.translate.routes import not_found_host, vhds_config, virtual_host
from xds_server.translate.type_urls import CLUSTER, ENDPOINT, LISTENER, ROUTE_VHDS, SECRET, VHOST

TYPES = (CLUSTER, ENDPOINT, ROUTE_VHDS, VHOST, LISTENER, SECRET)

Changes = dict[str, dict[str, Message | None]]
"""Resources by type URL and name that changed: the new message, or None once removed."""


def resources(model: Model, ports: EnvoyPorts) -> dict[str, dict[str, Message]]:
    """Every resource of a model, by type URL and name. Virtual hosts are named
    `<route configuration>/<host>` (the VHDS convention); the full route configurations
    are assembled from them (see ROUTE_VHDS)."""
    translator = Translator(ports)
    dirty = Dirty(set(model.hosts), set(model.clusters), tls=True, gateway=True)
    translator.update(model, dirty)
    return translator.current


class Translator:
    """The resources of a model as it changes: `update` translates again what `dirty`
    names, and says what that changed."""

    def __init__(self, ports: EnvoyPorts) -> None:
        self.ports = ports
        self.current: dict[str, dict[str, Message]] = {type_url: {} for type_url in TYPES}
        self._wildcards: set[str] = set()
        """Wildcard hosts: each repeats the `*` host's routes for deeper names."""
        self._gateway_names: dict[str, set[str]] = {}
        """The resources the Gateway API part made, by type URL."""
        self._gateway_hosts: HostMemo = {}

    def update(self, model: Model, dirty: Dirty) -> Changes:
        changes: Changes = {type_url: {} for type_url in TYPES}
        if not self.current[LISTENER]:
            for config in (HTTP, HTTPS):
                self._set(changes, ROUTE_VHDS, config, vhds_config(config))
            self._set(changes, LISTENER, HTTP, http_listener(self.ports))
        self._hosts(model, dirty.hosts, changes)
        self._placeholder(model, changes)
        for name in dirty.clusters:
            self._cluster(model, name, changes)
        if dirty.tls:
            self._tls(model, changes)
        if dirty.gateway:
            self._gateway(model, changes)
        return changes

    def _gateway(self, model: Model, changes: Changes) -> None:
        """The Gateway API resources again, and the ones it no longer has removed."""
        found = gateway_resources(model.gateway, self._gateway_hosts)
        for type_url, messages in found.items():
            for name in self._gateway_names.get(type_url, set()) - messages.keys():
                self._set(changes, type_url, name, None)
            for name, message in messages.items():
                current = self.current[type_url].get(name)
                if current is not message and current != message:
                    self._set(changes, type_url, name, message)
            self._gateway_names[type_url] = set(messages)

    def _hosts(self, model: Model, names: set[str], changes: Changes) -> None:
        catch_all = model.hosts.get("*")
        for name in names | (self._wildcards if "*" in names else set()):
            host = model.hosts.get(name)
            for config in (HTTP, HTTPS):
                vhost = None
                if host is not None:
                    vhost = virtual_host(config, host, catch_all if host.wildcard else None)
                self._set(changes, VHOST, f"{config}/{name}", vhost)
            if host is not None and host.wildcard:
                self._wildcards.add(name)
            else:
                self._wildcards.discard(name)

    def _placeholder(self, model: Model, changes: Changes) -> None:
        """With no Ingress host at all, each Ingress route configuration still gets one
        virtual host (`*`, 404 for everything, as Envoy answers a host it has none for):
        Envoy's listener waits for the first virtual host of its configuration, and would
        otherwise start only after its 15 s initial fetch timeout (a Gateway-only setup)."""
        for config in (HTTP, HTTPS):
            name = f"{config}/*"
            if not model.hosts and name not in self.current[VHOST]:
                self._set(changes, VHOST, name, not_found_host(config))
            elif model.hosts and "*" not in model.hosts and name in self.current[VHOST]:
                self._set(changes, VHOST, name, None)

    def _cluster(self, model: Model, name: str, changes: Changes) -> None:
        backend = model.clusters.get(name)
        if backend is None:
            self._set(changes, CLUSTER, name, None)
            self._set(changes, ENDPOINT, name, None)
            return
        made = cluster(name, backend.policy)
        if self.current[CLUSTER].get(name) != made:  # a changed cluster is a new pool in Envoy
            self._set(changes, CLUSTER, name, made)
        self._set(changes, ENDPOINT, name, load_assignment(name, backend))

    def _tls(self, model: Model, changes: Changes) -> None:
        self._set(
            changes, LISTENER, HTTPS, https_listener(model, self.ports) if model.tls else None
        )
        for name in self.current[SECRET].keys() - model.secrets.keys():
            self._set(changes, SECRET, name, None)
        for name, secret in model.secrets.items():
            self._set(changes, SECRET, name, tls_secret(name, secret.certificate, secret.key))

    def _set(self, changes: Changes, type_url: str, name: str, message: Message | None) -> None:
        current = self.current[type_url]
        if message is None:
            if current.pop(name, None) is not None:
                changes[type_url][name] = None
        else:
            current[name] = changes[type_url][name] = message
