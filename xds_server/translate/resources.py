"""Model -> Envoy resources. Pure functions: the same model always gives the same messages.

Listeners `ingress_http` and `ingress_https` (one filter chain per TLS binding, chosen by SNI),
route configurations of the same names over RDS, EDS clusters with their load assignments,
and the TLS secrets served over SDS. HTTP connection manager settings that make drains fast
are explained at `_connection_manager`.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message

from xds_server.model.types import EXACT, Endpoint, Host, Model, Route
from xds_server.translate.type_urls import CLUSTER, ENDPOINT, LISTENER, ROUTE_VHDS, SECRET, VHOST

HTTP, HTTPS = "ingress_http", "ingress_https"

IDLE_TIMEOUT = 60
"""Seconds an idle downstream connection may stay open (Envoy's default is an hour): bounds
how long pooled connections outlive a drain, whatever the clients do."""

H2_DRAIN_TIMEOUT = 2
"""Seconds between the graceful and the final HTTP/2 GOAWAY (Envoy's default is 5): clients
see the first at once; two seconds covers their in-flight round trips."""


@dataclass(frozen=True)
class EnvoyPorts:
    address: str = "0.0.0.0"
    http: int = 8080
    https: int = 8443


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.ApiVersion.V3,
    )


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def resources(
    model: Model, ports: EnvoyPorts, memo: TranslationMemo | None = None
) -> dict[str, dict[str, Message]]:
    """Every resource of a model, by type URL and name. Virtual hosts are named
    `<route configuration>/<host>` (the VHDS convention) and listed in precedence order;
    the full route configurations are assembled from them (see ROUTE_VHDS)."""
    memo = memo or TranslationMemo()
    vhosts: dict[str, Message] = {}
    for config in (HTTP, HTTPS):
        for host in model.sorted_hosts():
            vhost = memo.virtual_host(config, host)
            vhosts[vhost.name] = vhost
    result: dict[str, dict[str, Message]] = {
        CLUSTER: {name: memo.cluster(name) for name in model.clusters},
        ENDPOINT: {name: memo.load_assignment(name, eps) for name, eps in model.clusters.items()},
        ROUTE_VHDS: {HTTP: memo.vhds_config(HTTP), HTTPS: memo.vhds_config(HTTPS)},
        VHOST: vhosts,
        LISTENER: {HTTP: _http_listener(ports)},
        SECRET: {name: _secret(name, s.certificate, s.key) for name, s in model.secrets.items()},
    }
    if model.tls:
        result[LISTENER][HTTPS] = _https_listener(model, ports)
    return result


def _cluster(name: str) -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.DiscoveryType.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=_ads()),
        connect_timeout=duration_pb2.Duration(seconds=2),
    )


def _load_assignment(name: str, endpoints: list[Endpoint]) -> endpoint_pb2.ClusterLoadAssignment:
    lb = [
        endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address=e.address, port_value=e.port)
                )
            )
        )
        for e in endpoints
    ]
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name, endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lb)]
    )


def _match(route: Route) -> route_components_pb2.RouteMatch:
    if route.kind == EXACT:
        return route_components_pb2.RouteMatch(path=route.path)
    if route.path == "/":
        return route_components_pb2.RouteMatch(prefix="/")
    return route_components_pb2.RouteMatch(path_separated_prefix=route.path)


class TranslationMemo:
    """Messages kept between translations, by content: an unchanged virtual host, cluster
    or load assignment is the very same message object, which the snapshot then neither
    serializes nor hashes again. A change to one Ingress rebuilds only its hosts."""

    def __init__(self) -> None:
        self._vhosts: dict[tuple[str, str, tuple[int, ...]], tuple[list[Route], Message]] = {}
        self._clusters: dict[str, Message] = {}
        self._assignments: dict[tuple[str, tuple[Endpoint, ...]], Message] = {}
        self._vhds: dict[str, Message] = {}
        self._used: set[object] = set()

    def virtual_host(self, config: str, host: Host) -> route_components_pb2.VirtualHost:
        # Routes of an unchanged Ingress are the very same objects (the model's memo), so
        # their identities make a key far cheaper to hash than their contents; the routes
        # are kept with the message, so an identity is never reused while it is a key.
        key = (config, host.name, tuple(map(id, host.routes)))
        found = self._vhosts.get(key)
        if found is None:
            found = self._vhosts[key] = (list(host.routes), _virtual_host(config, host))
        self._used.add(key)
        message = found[1]
        assert isinstance(message, route_components_pb2.VirtualHost)
        return message

    def cluster(self, name: str) -> Message:
        if name not in self._clusters:
            self._clusters[name] = _cluster(name)
        self._used.add(name)
        return self._clusters[name]

    def load_assignment(self, name: str, endpoints: list[Endpoint]) -> Message:
        key = (name, tuple(endpoints))
        if key not in self._assignments:
            self._assignments[key] = _load_assignment(name, endpoints)
        self._used.add(key)
        return self._assignments[key]

    def vhds_config(self, name: str) -> Message:
        if name not in self._vhds:
            self._vhds[name] = route_pb2.RouteConfiguration(
                name=name, vhds=route_pb2.Vhds(config_source=_ads())
            )
        return self._vhds[name]

    def forget_unused(self) -> None:
        """Drop what the last translation did not use (memory stays flat under churn)."""
        for table in (self._vhosts, self._clusters, self._assignments):
            for key in [k for k in table if k not in self._used]:
                del table[key]  # type: ignore[arg-type]
        self._used = set()


def _virtual_host(config: str, host: Host) -> route_components_pb2.VirtualHost:
    return route_components_pb2.VirtualHost(
        name=f"{config}/{host.name}",
        domains=[host.name] if host.name == "*" else [host.name, f"{host.name}:*"],
        routes=[
            route_components_pb2.Route(
                match=_match(route),
                route=route_components_pb2.RouteAction(
                    cluster=route.upstream.cluster,
                    timeout=duration_pb2.Duration(seconds=0),  # streams end on their own
                ),
            )
            for route in host.routes
        ],
    )


def _connection_manager(route_config: str, stat_prefix: str) -> listener_components_pb2.Filter:
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix,
        codec_type=hcm_pb2.HttpConnectionManager.CodecType.AUTO,
        rds=hcm_pb2.Rds(config_source=_ads(), route_config_name=route_config),
        http_filters=[
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.router", typed_config=_pack(router_pb2.Router())
            )
        ],
        # Idle pooled connections do not live on for an hour after a drain.
        common_http_protocol_options=protocol_pb2.HttpProtocolOptions(
            idle_timeout=duration_pb2.Duration(seconds=IDLE_TIMEOUT)
        ),
        # HTTP/2 clients move on two seconds after the graceful GOAWAY, not five.
        drain_timeout=duration_pb2.Duration(seconds=H2_DRAIN_TIMEOUT),
        use_remote_address=_bool(True),
    )
    return listener_components_pb2.Filter(
        name="envoy.filters.network.http_connection_manager", typed_config=_pack(manager)
    )


def _bool(value: bool) -> Message:
    from google.protobuf import wrappers_pb2

    return wrappers_pb2.BoolValue(value=value)


def _socket(ports: EnvoyPorts, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=ports.address, port_value=port)
    )


def _http_listener(ports: EnvoyPorts) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name=HTTP,
        stat_prefix=HTTP,
        address=_socket(ports, ports.http),
        filter_chains=[
            listener_components_pb2.FilterChain(filters=[_connection_manager(HTTP, HTTP)])
        ],
    )


def _https_listener(model: Model, ports: EnvoyPorts) -> listener_pb2.Listener:
    chains = []
    for binding in model.tls:
        context = tls_pb2.DownstreamTlsContext(
            common_tls_context=tls_pb2.CommonTlsContext(
                tls_certificate_sds_secret_configs=[
                    secret_pb2.SdsSecretConfig(name=binding.secret, sds_config=_ads())
                ],
                alpn_protocols=["h2", "http/1.1"],
            )
        )
        chains.append(
            listener_components_pb2.FilterChain(
                filter_chain_match=listener_components_pb2.FilterChainMatch(
                    server_names=[h for h in binding.hosts]
                ),
                filters=[_connection_manager(HTTPS, HTTPS)],
                transport_socket=base_pb2.TransportSocket(
                    name="envoy.transport_sockets.tls", typed_config=_pack(context)
                ),
            )
        )
    return listener_pb2.Listener(
        name=HTTPS,
        stat_prefix=HTTPS,
        address=_socket(ports, ports.https),
        listener_filters=[
            listener_components_pb2.ListenerFilter(
                name="envoy.filters.listener.tls_inspector",
                typed_config=_pack(tls_inspector_pb2.TlsInspector()),
            )
        ],
        filter_chains=chains,
    )


def _secret(name: str, certificate: bytes, key: bytes) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=certificate),
            private_key=base_pb2.DataSource(inline_bytes=key),
        ),
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
            found.update(r.route.cluster for r in vhost.routes if r.route.cluster)
    return found
