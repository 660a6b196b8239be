"""The listeners: `ingress_http`, and `ingress_https` with one filter chain per TLS binding
(chosen by SNI), each running an HTTP connection manager set up for fast drains; the TLS
secrets they serve over SDS.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.core.v3 import address_pb2, base_pb2, protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from google.protobuf import duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from xds_server.model.types import Model
from xds_server.translate.common import ads_source, pack

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


def connection_manager(route_config: str, stat_prefix: str) -> listener_components_pb2.Filter:
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix,
        codec_type=hcm_pb2.HttpConnectionManager.CodecType.AUTO,
        rds=hcm_pb2.Rds(config_source=ads_source(), route_config_name=route_config),
        http_filters=[
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.router", typed_config=pack(router_pb2.Router())
            )
        ],
        # Idle pooled connections do not live on for an hour after a drain.
        common_http_protocol_options=protocol_pb2.HttpProtocolOptions(
            idle_timeout=duration_pb2.Duration(seconds=IDLE_TIMEOUT)
        ),
        # HTTP/2 clients move on two seconds after the graceful GOAWAY, not five.
        drain_timeout=duration_pb2.Duration(seconds=H2_DRAIN_TIMEOUT),
        use_remote_address=_bool(True),
        # WebSockets work as on any Ingress controller users come from (ingress-nginx).
        upgrade_configs=[hcm_pb2.HttpConnectionManager.UpgradeConfig(upgrade_type="websocket")],
    )
    return listener_components_pb2.Filter(
        name="envoy.filters.network.http_connection_manager", typed_config=pack(manager)
    )


def _bool(value: bool) -> Message:
    return wrappers_pb2.BoolValue(value=value)


def _socket(ports: EnvoyPorts, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=ports.address, port_value=port)
    )


def http_listener(ports: EnvoyPorts) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name=HTTP,
        stat_prefix=HTTP,
        address=_socket(ports, ports.http),
        filter_chains=[
            listener_components_pb2.FilterChain(filters=[connection_manager(HTTP, HTTP)])
        ],
    )


def https_listener(model: Model, ports: EnvoyPorts) -> listener_pb2.Listener:
    chains = []
    for binding in model.tls:
        context = tls_pb2.DownstreamTlsContext(
            common_tls_context=tls_pb2.CommonTlsContext(
                tls_certificate_sds_secret_configs=[
                    secret_pb2.SdsSecretConfig(name=binding.secret, sds_config=ads_source())
                ],
                alpn_protocols=["h2", "http/1.1"],
            )
        )
        chains.append(
            listener_components_pb2.FilterChain(
                filter_chain_match=listener_components_pb2.FilterChainMatch(
                    server_names=[h for h in binding.hosts]
                ),
                filters=[connection_manager(HTTPS, HTTPS)],
                transport_socket=base_pb2.TransportSocket(
                    name="envoy.transport_sockets.tls", typed_config=pack(context)
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
                typed_config=pack(tls_inspector_pb2.TlsInspector()),
            )
        ],
        filter_chains=chains,
    )


def tls_secret(name: str, certificate: bytes, key: bytes) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=certificate),
            private_key=base_pb2.DataSource(inline_bytes=key),
        ),
    )
