"""The Gateway API part -> Envoy resources: one listener per (address, port) a Gateway
listener is served on (`gateway_<address>_<port>`): HTTP with one filter chain, HTTPS with
one per SNI name (TLS terminated with the listener's certificates, over SDS). Each chain has
its route configuration over VHDS like the Ingress ones, one virtual host per hostname,
routes in the spec's precedence.
"""

from __future__ import annotations

import re

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from xds_server.model.gateway.types import (
    EXACT,
    REGEX,
    Chain,
    GatewayPart,
    GatewayRoute,
    HeaderEdits,
    Port,
    Redirect,
    WeightedBackend,
)
from xds_server.model.types import RetrySettings
from xds_server.translate.common import ads_source, pack
from xds_server.translate.listeners import connection_manager, tls_secret
from xds_server.translate.retries import hoisted, with_retries
from xds_server.translate.routes import INVALID_BACKEND, not_found_host, vhds_config
from xds_server.translate.type_urls import LISTENER, ROUTE_VHDS, SECRET, VHOST

REDIRECT_CODES = {
    301: route_components_pb2.RedirectAction.MOVED_PERMANENTLY,
    302: route_components_pb2.RedirectAction.FOUND,
    303: route_components_pb2.RedirectAction.SEE_OTHER,
    307: route_components_pb2.RedirectAction.TEMPORARY_REDIRECT,
    308: route_components_pb2.RedirectAction.PERMANENT_REDIRECT,
}


HostMemo = dict[str, tuple[list[GatewayRoute], route_components_pb2.VirtualHost]]
"""Virtual hosts by name, with the routes (the same objects) they were made of."""


def gateway_resources(
    part: GatewayPart | None, memo: HostMemo | None = None
) -> dict[str, dict[str, Message]]:
    """Every resource of the Gateway API part, by type URL and name. With `memo` (kept by
    the caller between calls), a virtual host made of the very same routes as last time is
    not made again: one changed HTTPRoute rebuilds its hosts, not thousands."""
    memo = {} if memo is None else memo
    kept: HostMemo = {}
    found: dict[str, dict[str, Message]] = {LISTENER: {}, ROUTE_VHDS: {}, VHOST: {}, SECRET: {}}
    if part is None:
        return found
    for name, secret in part.secrets.items():
        found[SECRET][name] = tls_secret(name, secret.certificate, secret.key)
    for port in part.ports.values():
        found[LISTENER][port.name] = listener(port)
        for chain in port.chains.values():
            found[ROUTE_VHDS][chain.name] = vhds_config(chain.name)
            for host, routes in chain.hosts.items():
                name = f"{chain.name}/{host}"
                hit = memo.get(name)
                if hit is None or not _same(hit[0], routes):
                    hit = (routes, virtual_host(chain, host, routes))
                kept[name] = hit
                found[VHOST][name] = hit[1]
            if not chain.hosts:  # Envoy's listener would wait for a first virtual host
                found[VHOST][f"{chain.name}/*"] = not_found_host(chain.name)
    memo.clear()
    memo.update(kept)
    return found


def _same(before: list[GatewayRoute], now: list[GatewayRoute]) -> bool:
    return len(before) == len(now) and all(a is b for a, b in zip(before, now, strict=True))


def listener(port: Port) -> listener_pb2.Listener:
    made = listener_pb2.Listener(
        name=port.name,
        stat_prefix=port.name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=port.address, port_value=port.port)
        ),
        filter_chains=[_chain(port, chain) for chain in chain_order(port)],
    )
    if port.tls:
        made.listener_filters.append(
            listener_components_pb2.ListenerFilter(
                name="envoy.filters.listener.tls_inspector",
                typed_config=pack(tls_inspector_pb2.TlsInspector()),
            )
        )
    return made


def chain_order(port: Port) -> list[Chain]:
    """A port's filter chains in the listener's order (named SNI first, the default last)."""
    return sorted(port.chains.values(), key=lambda c: (c.sni is None, c.sni or ""))


def _chain(port: Port, chain: Chain) -> listener_components_pb2.FilterChain:
    made = listener_components_pb2.FilterChain(filters=[connection_manager(chain.name, port.name)])
    if not port.tls:
        return made
    if chain.sni is not None:
        made.filter_chain_match.server_names.append(chain.sni)
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificate_sds_secret_configs=[
                secret_pb2.SdsSecretConfig(name=name, sds_config=ads_source())
                for name in chain.certificates
            ],
            alpn_protocols=["h2", "http/1.1"],
        )
    )
    made.transport_socket.CopyFrom(
        base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(context))
    )
    return made


def virtual_host(
    chain: Chain, host: str, routes: list[GatewayRoute]
) -> route_components_pb2.VirtualHost:
    """A host's routes in precedence order; what none matches gets Envoy's 404."""
    return hoisted(
        route_components_pb2.VirtualHost(
            name=f"{chain.name}/{host}",
            domains=[host],
            routes=[
                made
                for r in routes
                for made in with_retries(_route(r), retry_of(r), r.match.method)
            ],
        )
    )


def retry_of(route: GatewayRoute) -> RetrySettings | None:
    """How a route retries (None: it sends nothing upstream)."""
    return None if route.redirect is not None or route.fails else route.retry


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
    spec = route.match
    if spec.path_kind == EXACT:
        match = route_components_pb2.RouteMatch(path=spec.path)
    elif spec.path_kind == REGEX:
        match = route_components_pb2.RouteMatch(safe_regex=_regex(spec.path))
    elif spec.path == "/":
        match = route_components_pb2.RouteMatch(prefix="/")
    else:
        match = route_components_pb2.RouteMatch(path_separated_prefix=spec.path)
    for kind, name, value in spec.headers:
        match.headers.append(
            route_components_pb2.HeaderMatcher(name=name, string_match=_string(kind, value))
        )
    if spec.method is not None:
        match.headers.append(
            route_components_pb2.HeaderMatcher(
                name=":method", string_match=string_pb2.StringMatcher(exact=spec.method)
            )
        )
    for kind, name, value in spec.query:
        match.query_parameters.append(
            route_components_pb2.QueryParameterMatcher(name=name, string_match=_string(kind, value))
        )
    return match


def _string(kind: str, value: str) -> string_pb2.StringMatcher:
    if kind == REGEX:
        return string_pb2.StringMatcher(safe_regex=_regex(value))
    return string_pb2.StringMatcher(exact=value)


def _regex(value: str) -> regex_pb2.RegexMatcher:
    return regex_pb2.RegexMatcher(regex=value)


def _action(route: GatewayRoute) -> route_components_pb2.RouteAction:
    """Where the route sends traffic: no timeout unless the rule sets one (Envoy's default
    of 15 s would cut long requests no one asked to cut)."""
    timeout_ms = route.timeout_ms or 0
    action = route_components_pb2.RouteAction(
        timeout=duration_pb2.Duration(seconds=timeout_ms // 1000, nanos=timeout_ms % 1000 * 10**6),
        cluster_not_found_response_code=route_components_pb2.RouteAction.INTERNAL_SERVER_ERROR,
    )
    weighted = [b for b in route.backends if b.weight > 0]
    if len(weighted) == 1 and weighted[0].cluster is not None and not _edits(weighted[0]):
        action.cluster = weighted[0].cluster
    else:
        clusters = action.weighted_clusters.clusters
        for backend in weighted:
            share = route_components_pb2.WeightedCluster.ClusterWeight(
                name=backend.cluster or INVALID_BACKEND,
                weight=wrappers_pb2.UInt32Value(value=backend.weight),
            )
            share.request_headers_to_add.extend(_header_options(backend.request_headers))
            share.request_headers_to_remove.extend(backend.request_headers.remove)
            clusters.append(share)
    for mirror in route.mirrors:
        action.request_mirror_policies.append(
            route_components_pb2.RouteAction.RequestMirrorPolicy(
                cluster=mirror.cluster,
                runtime_fraction=base_pb2.RuntimeFractionalPercent(
                    default_value=_fraction(mirror.percent)
                ),
            )
        )
    rewrite = route.rewrite
    if rewrite is not None and rewrite.hostname:
        action.host_rewrite_literal = rewrite.hostname
    if rewrite is not None and rewrite.path is not None:
        kind, value = rewrite.path
        if kind == "ReplacePrefixMatch":
            _replace_prefix(action, route.match.path, value)
        else:
            action.regex_rewrite.pattern.regex = "^.*$"
            action.regex_rewrite.substitution = value
    return action


def _replace_prefix(
    action: route_components_pb2.RouteAction | route_components_pb2.RedirectAction,
    prefix: str,
    value: str,
) -> None:
    """ReplacePrefixMatch as the spec means it, element-wise: with prefix /foo, /foo/bar
    becomes /xyz/bar under /xyz and /bar under / (Envoy's plain prefix rewrite would give
    //bar), and /foo becomes /xyz or /."""
    matched, wanted = prefix.rstrip("/"), value.rstrip("/")
    if wanted and matched:
        action.prefix_rewrite = wanted
        return
    action.regex_rewrite.pattern.regex = f"^{re.escape(matched)}/*"
    action.regex_rewrite.substitution = f"{wanted}/"


def _edits(backend: WeightedBackend) -> bool:
    edits = backend.request_headers
    return bool(edits.set or edits.add or edits.remove)


def _fraction(percent: float) -> percent_pb2.FractionalPercent:
    """A percentage to a millionth, as Envoy takes it."""
    return percent_pb2.FractionalPercent(
        numerator=round(percent * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
    )


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
            _replace_prefix(action, route.match.path, value)
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
