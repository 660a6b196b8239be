"""Hosts and routes -> virtual hosts: where a model Route becomes an Envoy route.

Virtual hosts are named `<route configuration>/<host>` (the VHDS convention); a delta proxy
gets each as its own resource, a state-of-the-world proxy gets them inside whole route
configurations.
"""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2, route_pb2
from google.protobuf import duration_pb2
from google.protobuf.message import Message

from xds_server.model.types import EXACT, Host, Route
from xds_server.translate.common import ads_source


def route_match(route: Route) -> route_components_pb2.RouteMatch:
    if route.kind == EXACT:
        return route_components_pb2.RouteMatch(path=route.path)
    if route.path == "/":
        return route_components_pb2.RouteMatch(prefix="/")
    return route_components_pb2.RouteMatch(path_separated_prefix=route.path)


def virtual_host(config: str, host: Host) -> route_components_pb2.VirtualHost:
    return route_components_pb2.VirtualHost(
        name=f"{config}/{host.name}",
        domains=[host.name] if host.name == "*" else [host.name, f"{host.name}:*"],
        routes=[
            route_components_pb2.Route(
                match=route_match(route),
                route=route_components_pb2.RouteAction(
                    cluster=route.upstream.cluster,
                    timeout=duration_pb2.Duration(seconds=0),  # streams end on their own
                ),
            )
            for route in host.routes
        ],
    )


def vhds_config(name: str) -> route_pb2.RouteConfiguration:
    """A route configuration whose virtual hosts come over VHDS, one resource each."""
    return route_pb2.RouteConfiguration(name=name, vhds=route_pb2.Vhds(config_source=ads_source()))


def referenced_clusters(messages: dict[str, Message]) -> set[str]:
    """Clusters the given route configurations or virtual hosts send traffic to."""
    found: set[str] = set()
    for message in messages.values():
        if isinstance(message, route_pb2.RouteConfiguration):
            vhosts = list(message.virtual_hosts)
        else:
            assert isinstance(message, route_components_pb2.VirtualHost)
            vhosts = [message]
        for vhost in vhosts:
            found.update(r.route.cluster for r in vhost.routes if r.route.cluster)
    return found
