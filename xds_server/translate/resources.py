"""Model -> Envoy resources. Pure functions: the same model always gives the same messages.

The pieces live by kind (listeners, routes, clusters); this module puts them together, by
type URL and name, and keeps what did not change between translations (TranslationMemo).
"""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2
from google.protobuf.message import Message

from xds_server.model.types import Endpoint, Host, Model, Route
from xds_server.translate.clusters import cluster, load_assignment
from xds_server.translate.listeners import (
    HTTP,
    HTTPS,
    EnvoyPorts,
    http_listener,
    https_listener,
    tls_secret,
)
from xds_server.translate.routes import vhds_config, virtual_host
from xds_server.translate.type_urls import CLUSTER, ENDPOINT, LISTENER, ROUTE_VHDS, SECRET, VHOST


def resources(
    model: Model, ports: EnvoyPorts, memo: TranslationMemo | None = None
) -> dict[str, dict[str, Message]]:
    """Every resource of a model, by type URL and name. Virtual hosts are named
    `<route configuration>/<host>` (the VHDS convention) and listed in precedence order;
    the full route configurations are assembled from them (see ROUTE_VHDS)."""
    memo = memo or TranslationMemo()
    vhosts: dict[str, Message] = {}
    catch_all = model.hosts.get("*")
    for config in (HTTP, HTTPS):
        for host in model.sorted_hosts():
            vhost = memo.virtual_host(config, host, catch_all if host.wildcard else None)
            vhosts[vhost.name] = vhost
    result: dict[str, dict[str, Message]] = {
        CLUSTER: {name: memo.cluster(name) for name in model.clusters},
        ENDPOINT: {name: memo.load_assignment(name, eps) for name, eps in model.clusters.items()},
        ROUTE_VHDS: {HTTP: memo.vhds_config(HTTP), HTTPS: memo.vhds_config(HTTPS)},
        VHOST: vhosts,
        LISTENER: {HTTP: http_listener(ports)},
        SECRET: {name: tls_secret(name, s.certificate, s.key) for name, s in model.secrets.items()},
    }
    if model.tls:
        result[LISTENER][HTTPS] = https_listener(model, ports)
    return result


class TranslationMemo:
    """Messages kept between translations, by content: an unchanged virtual host, cluster
    or load assignment is the very same message object, which the snapshot then neither
    serializes nor hashes again. A change to one Ingress rebuilds only its hosts."""

    def __init__(self) -> None:
        self._vhosts: dict[
            tuple[str, str, tuple[int, ...]], tuple[list[Route | None], Message]
        ] = {}
        self._clusters: dict[str, Message] = {}
        self._assignments: dict[tuple[str, tuple[Endpoint, ...]], Message] = {}
        self._vhds: dict[str, Message] = {}
        self._used: set[object] = set()

    def virtual_host(
        self, config: str, host: Host, catch_all: Host | None = None
    ) -> route_components_pb2.VirtualHost:
        # Routes of an unchanged Ingress are the very same objects (the model's memo), so
        # their identities make a key far cheaper to hash than their contents; the routes
        # are kept with the message, so an identity is never reused while it is a key.
        routes = [*host.routes, host.default]
        if catch_all is not None:
            routes += [*catch_all.routes, catch_all.default]
        key = (config, host.name, tuple(map(id, routes)))
        found = self._vhosts.get(key)
        if found is None:
            found = self._vhosts[key] = (routes, virtual_host(config, host, catch_all))
        self._used.add(key)
        message = found[1]
        assert isinstance(message, route_components_pb2.VirtualHost)
        return message

    def cluster(self, name: str) -> Message:
        if name not in self._clusters:
            self._clusters[name] = cluster(name)
        self._used.add(name)
        return self._clusters[name]

    def load_assignment(self, name: str, endpoints: list[Endpoint]) -> Message:
        key = (name, tuple(endpoints))
        if key not in self._assignments:
            self._assignments[key] = load_assignment(name, endpoints)
        self._used.add(key)
        return self._assignments[key]

    def vhds_config(self, name: str) -> Message:
        if name not in self._vhds:
            self._vhds[name] = vhds_config(name)
        return self._vhds[name]

    def forget_unused(self) -> None:
        """Drop what the last translation did not use (memory stays flat under churn)."""
        for table in (self._vhosts, self._clusters, self._assignments):
            for key in [k for k in table if k not in self._used]:
                del table[key]  # type: ignore[arg-type]
        self._used = set()
