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

from xds_server.model import EXACT, Endpoint, Host, Model, Route

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
PUSH_ORDER = (CLUSTER, ENDPOINT, SECRET, LISTENER, ROUTE)
"""Make before break: what a resource refers to is sent before the resource."""

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


def resources(model: Model, ports: EnvoyPorts) -> dict[str, dict[str, Message]]:
    """Every resource of a model, by type URL and name."""
    routes = _virtual_hosts(model.sorted_hosts())
    result: dict[str, dict[str, Message]] = {
        CLUSTER: {name: _cluster(name) for name in model.clusters},
        ENDPOINT: {name: _load_assignment(name, eps) for name, eps in model.clusters.items()},
        ROUTE: {
            HTTP: route_pb2.RouteConfiguration(name=HTTP, virtual_hosts=routes),
            HTTPS: route_pb2.RouteConfiguration(name=HTTPS, virtual_hosts=routes),
        },
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


def _virtual_hosts(hosts: list[Host]) -> list[route_components_pb2.VirtualHost]:
    return [
        route_components_pb2.VirtualHost(
            name=host.name,
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
        for host in hosts
    ]


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


def referenced_clusters(route_configs: dict[str, Message]) -> set[str]:
    """Clusters the given route configurations send traffic to."""
    found: set[str] = set()
    for config in route_configs.values():
        assert isinstance(config, route_pb2.RouteConfiguration)
        for vhost in config.virtual_hosts:
            found.update(r.route.cluster for r in vhost.routes if r.route.cluster)
    return found
