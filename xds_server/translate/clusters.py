"""Upstreams -> EDS clusters and their load assignments."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from google.protobuf import duration_pb2

from xds_server.model.types import Endpoint
from xds_server.translate.common import ads_source


def cluster(name: str) -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.DiscoveryType.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads_source()),
        connect_timeout=duration_pb2.Duration(seconds=2),
    )


def load_assignment(name: str, endpoints: list[Endpoint]) -> endpoint_pb2.ClusterLoadAssignment:
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
