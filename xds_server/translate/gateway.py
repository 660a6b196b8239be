"""The Gateway API part -> Envoy resources: one listener per (address, port) a Gateway
listener is served on (`gateway_<address>_<port>`), its route configuration over VHDS like
the Ingress ones, one virtual host per hostname, routes in the spec's precedence.
"""

from __future__ import annotations

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from xds_server.model.gateway import EXACT, GatewayPart, GatewayRoute, HeaderEdits, Port, Redirect
from xds_server.translate.listeners import connection_manager
from xds_server.translate.routes import INVALID_BACKEND, vhds_config
from xds_server.translate.type_urls import LISTENER, ROUTE_VHDS, VHOST

REDIRECT_CODES = {
    301: route_components_pb2.RedirectAction.MOVED_PERMANENTLY,
    302: route_components_pb2.RedirectAction.FOUND,
    303: route_components_pb2.RedirectAction.SEE_OTHER,
    307: route_components_pb2.RedirectAction.TEMPORARY_REDIRECT,
    308: route_components_pb2.RedirectAction.PERMANENT_REDIRECT,
}


def gateway_resources(part: GatewayPart | None) -> dict[str, dict[str, Message]]:
    """Every resource of the Gateway API part, by type URL and name."""
    found: dict[str, dict[str, Message]] = {LISTENER: {}, ROUTE_VHDS: {}, VHOST: {}}
    if part is None:
        return found
    for port in part.ports.values():
        found[LISTENER][port.name] = listener(port)
        found[ROUTE_VHDS][port.name] = vhds_config(port.name)
        for host, routes in port.hosts.items():
            found[VHOST][f"{port.name}/{host}"] = virtual_host(port, host, routes)
    return found


def listener(port: Port) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name=port.name,
        stat_prefix=port.name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=port.address, port_value=port.port)
        ),
        filter_chains=[
            listener_components_pb2.FilterChain(filters=[connection_manager(port.name, port.name)])
        ],
    )


def virtual_host(
    port: Port, host: str, routes: list[GatewayRoute]
) -> route_components_pb2.VirtualHost:
    """A host's routes in precedence order; what none matches gets Envoy's 404."""
    return route_components_pb2.VirtualHost(
        name=f"{port.name}/{host}", domains=[host], routes=[_route(r) for r in routes]
    )


def _route(route: GatewayRoute) -> route_components_pb2.Route:
    made = route_components_pb2.Route(match=_match(route))
    made.request_headers_to_add.extend(_header_options(route.request_headers))
    made.request_headers_to_remove.extend(route.request_headers.remove)
    made.response_headers_to_add.extend(_header_options(route.response_headers))
    made.response_headers_to_remove.extend(route.response_headers.remove)
    if route.redirect is not None:
        made.redirect.CopyFrom(_redirect(route.redirect, route))
    elif route.fails:
        made.direct_response.CopyFrom(route_components_pb2.DirectResponseAction(status=500))
    else:
        made.route.CopyFrom(_action(route))
    return made


def _match(route: GatewayRoute) -> route_components_pb2.RouteMatch:
    if route.path_kind == EXACT:
        match = route_components_pb2.RouteMatch(path=route.path)
    elif route.path == "/":
        match = route_components_pb2.RouteMatch(prefix="/")
    else:
        match = route_components_pb2.RouteMatch(path_separated_prefix=route.path)
    for name, value in route.headers:
        match.headers.append(_exact_header(name, value))
    if route.method is not None:
        match.headers.append(_exact_header(":method", route.method))
    for name, value in route.query:
        match.query_parameters.append(
            route_components_pb2.QueryParameterMatcher(
                name=name, string_match=string_pb2.StringMatcher(exact=value)
            )
        )
    return match


def _exact_header(name: str, value: str) -> route_components_pb2.HeaderMatcher:
    return route_components_pb2.HeaderMatcher(
        name=name, string_match=string_pb2.StringMatcher(exact=value)
    )


def _action(route: GatewayRoute) -> route_components_pb2.RouteAction:
    action = route_components_pb2.RouteAction(
        timeout=duration_pb2.Duration(seconds=0),
        cluster_not_found_response_code=route_components_pb2.RouteAction.INTERNAL_SERVER_ERROR,
    )
    weighted = [b for b in route.backends if b.weight > 0]
    if len(weighted) == 1 and weighted[0].cluster is not None:
        action.cluster = weighted[0].cluster
    else:
        clusters = action.weighted_clusters.clusters
        for backend in weighted:
            clusters.append(
                route_components_pb2.WeightedCluster.ClusterWeight(
                    name=backend.cluster or INVALID_BACKEND,
                    weight=wrappers_pb2.UInt32Value(value=backend.weight),
                )
            )
    rewrite = route.rewrite
    if rewrite is not None and rewrite.hostname:
        action.host_rewrite_literal = rewrite.hostname
    if rewrite is not None and rewrite.path is not None:
        kind, value = rewrite.path
        if kind == "ReplacePrefixMatch":
            action.prefix_rewrite = value
        else:
            action.regex_rewrite.pattern.regex = "^.*$"
            action.regex_rewrite.substitution = value
    return action


def _redirect(redirect: Redirect, route: GatewayRoute) -> route_components_pb2.RedirectAction:
    action = route_components_pb2.RedirectAction(response_code=REDIRECT_CODES[redirect.status])
    if redirect.scheme:
        action.scheme_redirect = redirect.scheme
    if redirect.hostname:
        action.host_redirect = redirect.hostname
    if redirect.port is not None:
        action.port_redirect = redirect.port
    if redirect.path is not None:
        kind, value = redirect.path
        if kind == "ReplaceFullPath":
            action.path_redirect = value
        else:
            action.prefix_rewrite = value
    return action


def _header_options(edits: HeaderEdits) -> list[base_pb2.HeaderValueOption]:
    overwrite = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    append = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
    return [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=name, value=value), append_action=action
        )
        for pairs, action in ((edits.set, overwrite), (edits.add, append))
        for name, value in pairs
    ]
