"""Hosts and routes -> virtual hosts: where a model Route becomes an Envoy route.

Virtual hosts are named `<route configuration>/<host>` (the VHDS convention); a delta proxy
gets each as its own resource, a state-of-the-world proxy gets them inside whole route
configurations.
"""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import duration_pb2
from google.protobuf.message import Message

from xds_server.model.types import EXACT, Host, RetrySettings, Route
from xds_server.translate.common import ads_source
from xds_server.translate.retries import hoisted, with_retries


def route_match(route: Route) -> route_components_pb2.RouteMatch:
    if route.kind == EXACT:
        return route_components_pb2.RouteMatch(path=route.path)
    if route.path == "/":
        return route_components_pb2.RouteMatch(prefix="/")
    return route_components_pb2.RouteMatch(path_separated_prefix=route.path)


Planned = list[tuple[Route | None, bool]]
"""A virtual host's routes in order: the model route (None: the one-label 404) and whether
it carries the one-label check of a wildcard host."""


def planned(host: Host, catch_all: Host | None) -> Planned:
    """Kubernetes' host semantics on top of Envoy's. Envoy picks a virtual host by exact
    domain, then by the longest `*.suffix` of any depth; Kubernetes' `*.foo.com` covers one
    label. So a wildcard host's own routes (and its defaultBackend, or a 404) are taken only
    when the request's host has one label before the suffix; a deeper host, which matches
    no rule's host in Kubernetes' eyes, gets the routes of the `*` host (rules without a
    host, then the oldest defaultBackend), repeated here because Envoy never falls back from
    one virtual host to another. Exact hosts and `*` need no check."""
    checked = host.wildcard
    own: Planned = [(route, checked) for route in host.routes]
    if host.default is not None:
        own.append((host.default, checked))
    elif checked:
        own.append((None, True))  # one label, no path matched, no defaultBackend: 404
    if host.wildcard and catch_all is not None:
        own += [(route, False) for route in catch_all.routes]
        if catch_all.default is not None:
            own.append((catch_all.default, False))
    return own


def virtual_host(
    config: str, host: Host, catch_all: Host | None = None
) -> route_components_pb2.VirtualHost:
    """Ports never reach the domains: the route configuration ignores any port of the Host
    header while matching (`ignore_port_in_host_matching`), so `foo.com:8080` matches
    `foo.com`, and the backend still sees the header as the client sent it."""
    label = _one_label(host.name) if host.wildcard else None
    return hoisted(
        route_components_pb2.VirtualHost(
            name=f"{config}/{host.name}",
            domains=[host.name],
            routes=[
                made
                for route, checked in planned(host, catch_all)
                for made in with_retries(
                    _route(route, label if checked else None), retry_of(route), None
                )
            ],
        )
    )


def retry_of(route: Route | None) -> RetrySettings | None:
    """How a planned route retries (None: it answers 404 itself)."""
    return None if route is None else route.upstream.policy.retry


def _one_label(wildcard: str) -> route_components_pb2.HeaderMatcher:
    """The Host is one DNS label, then the wildcard's suffix (any case: hosts ignore it),
    then perhaps a port (it reaches the routes as sent)."""
    suffix = wildcard[1:].replace(".", "\\.")
    return route_components_pb2.HeaderMatcher(
        name=":authority",
        string_match=string_pb2.StringMatcher(
            safe_regex=regex_pb2.RegexMatcher(regex=f"(?i)^[^.:]+{suffix}(:[0-9]+)?$")
        ),
    )


def _route(
    route: Route | None, label: route_components_pb2.HeaderMatcher | None
) -> route_components_pb2.Route:
    headers = [label] if label is not None else []
    if route is None:
        return route_components_pb2.Route(
            match=route_components_pb2.RouteMatch(prefix="/", headers=headers),
            direct_response=route_components_pb2.DirectResponseAction(status=404),
        )
    match = route_match(route)
    match.headers.extend(headers)
    return route_components_pb2.Route(
        match=match,
        route=route_components_pb2.RouteAction(
            cluster=route.upstream.cluster,
            timeout=duration_pb2.Duration(seconds=0),  # streams end on their own
        ),
    )


def not_found_host(config: str) -> route_components_pb2.VirtualHost:
    """`*` answering 404 to everything: what Envoy answers a host it has no virtual host for."""
    return route_components_pb2.VirtualHost(
        name=f"{config}/*", domains=["*"], routes=[_route(None, None)]
    )


ROUTE_OPTIONS = {"ignore_port_in_host_matching": True}
"""Every route configuration's (VHDS or whole): hosts are matched without their port, as
Kubernetes and the Gateway API match them (`*.foo.com:*` would be a literal to Envoy), and
the Host header reaches the backend as the client sent it."""
ROUTE_OPTIONS_BYTES = route_pb2.RouteConfiguration(**ROUTE_OPTIONS).SerializeToString()
"""The same as serialized fields, appended to a whole route configuration assembled from
bytes (a protobuf message is the concatenation of its fields)."""


def vhds_config(name: str) -> route_pb2.RouteConfiguration:
    """A route configuration whose virtual hosts come over VHDS, one resource each."""
    return route_pb2.RouteConfiguration(
        name=name, vhds=route_pb2.Vhds(config_source=ads_source()), **ROUTE_OPTIONS
    )


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
            for route in vhost.routes:
                if route.route.cluster:
                    found.add(route.route.cluster)
                found.update(w.name for w in route.route.weighted_clusters.clusters
                             if w.name != INVALID_BACKEND)  # fmt: skip
                found.update(m.cluster for m in route.route.request_mirror_policies)
    return found


INVALID_BACKEND = "gateway-invalid-backend"
"""A weighted share of backends that cannot be used names this cluster, which never exists:
Envoy answers with the route's cluster_not_found_response_code (500, as the Gateway API
asks). The one cluster a route may name without it existing."""
