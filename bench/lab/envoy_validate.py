"""A snapshot checked by the real Envoy binary, without a running proxy: its resources become
the static resources of a bootstrap (EDS clusters with their load assignments inline, RDS
with the full route configurations inline, SDS secrets inline), and `envoy --mode validate`
judges it with every check Envoy makes at load time (its PGV rules and its own semantics:
duplicate filter chains, unknown clusters, unreadable certificates)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2

from bench.lab.envoy import envoy_binary
from xds_server.translate.type_urls import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from xds_server.xds.cache import Snapshot


def static_bootstrap(snapshot: Snapshot) -> bootstrap_pb2.Bootstrap:
    bootstrap = bootstrap_pb2.Bootstrap()
    assignments = snapshot.entries(ENDPOINT)
    for name, entry in snapshot.entries(CLUSTER).items():
        cluster = cluster_pb2.Cluster()
        cluster.CopyFrom(entry.decoded())
        cluster.type = cluster_pb2.Cluster.DiscoveryType.STATIC
        cluster.ClearField("eds_cluster_config")
        cluster.load_assignment.CopyFrom(assignments[name].decoded())
        bootstrap.static_resources.clusters.append(cluster)
    for entry in snapshot.entries(LISTENER).values():
        listener = listener_pb2.Listener()
        listener.CopyFrom(entry.decoded())
        for chain in listener.filter_chains:
            _inline_routes(chain, snapshot)
            _inline_secrets(chain, snapshot)
        bootstrap.static_resources.listeners.append(listener)
    return bootstrap


def _inline_routes(chain: listener_pb2.FilterChain, snapshot: Snapshot) -> None:
    routes = snapshot.entries(ROUTE)
    for network_filter in chain.filters:
        manager = hcm_pb2.HttpConnectionManager()
        network_filter.typed_config.Unpack(manager)
        manager.route_config.CopyFrom(routes[manager.rds.route_config_name].decoded())
        network_filter.typed_config.Pack(manager)


def _inline_secrets(chain: listener_pb2.FilterChain, snapshot: Snapshot) -> None:
    if not chain.HasField("transport_socket"):
        return
    context = tls_pb2.DownstreamTlsContext()
    chain.transport_socket.typed_config.Unpack(context)
    common = context.common_tls_context
    for config in common.tls_certificate_sds_secret_configs:
        secret = snapshot.entries(SECRET)[config.name].decoded()
        assert isinstance(secret, secret_pb2.Secret)
        common.tls_certificates.append(secret.tls_certificate)
    common.ClearField("tls_certificate_sds_secret_configs")
    chain.transport_socket.typed_config.Pack(context)


def envoy_accepts(snapshot: Snapshot) -> tuple[bool, str]:
    """(True, "") when `envoy --mode validate` accepts the snapshot; else its complaint."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "bootstrap.pb"
        path.write_bytes(static_bootstrap(snapshot).SerializeToString())
        result = subprocess.run(
            [envoy_binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart",
             "-l", "critical"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )  # fmt: skip
    return result.returncode == 0, (result.stdout + result.stderr)[-2000:]
