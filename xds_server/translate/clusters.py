"""Backends -> EDS clusters and their load assignments.

Every cluster is set up for backends that come and go at each deploy (DESIGN.md §8):

* no panic mode (threshold 0): Envoy otherwise sends new requests to DRAINING hosts once
  too few are healthy, exactly while a rollout replaces them;
* no merge window: a host turning DRAINING is applied when it arrives (Envoy holds
  health-only changes back up to 1 s by default, while the pod already got SIGTERM);
* a retry budget (25 % of the requests in flight, at least 10) instead of Envoy's fixed 3
  concurrent retries, which a rollout under load exhausts at once;
* upstream connections closed after an idle time shorter than the backends' keep-alive
  (the Service may say otherwise), HTTP/2 for `kubernetes.io/h2c` ports;
* slow start when the Service asks for it.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import address_pb2, health_check_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as http_options_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from xds_server.model.types import Backend, BackendPolicy
from xds_server.translate.common import ads_source, duration, pack

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
RETRY_BUDGET_PERCENT = 25.0
RETRY_BUDGET_MIN_CONCURRENCY = 10


def cluster(name: str, policy: BackendPolicy) -> cluster_pb2.Cluster:
    made = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.DiscoveryType.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads_source()),
        connect_timeout=duration_pb2.Duration(seconds=2),
        common_lb_config=cluster_pb2.Cluster.CommonLbConfig(
            healthy_panic_threshold=percent_pb2.Percent(value=0),
            update_merge_window=duration_pb2.Duration(),
        ),
        circuit_breakers=circuit_breaker_pb2.CircuitBreakers(
            thresholds=[
                circuit_breaker_pb2.CircuitBreakers.Thresholds(
                    retry_budget=circuit_breaker_pb2.CircuitBreakers.Thresholds.RetryBudget(
                        budget_percent=percent_pb2.Percent(value=RETRY_BUDGET_PERCENT),
                        min_retry_concurrency=wrappers_pb2.UInt32Value(
                            value=RETRY_BUDGET_MIN_CONCURRENCY
                        ),
                    )
                )
            ]
        ),
    )
    made.typed_extension_protocol_options[HTTP_OPTIONS].CopyFrom(pack(_http_options(policy)))
    if policy.slow_start_ms:
        made.round_robin_lb_config.slow_start_config.slow_start_window.CopyFrom(
            duration(policy.slow_start_ms)
        )
    return made


def _http_options(policy: BackendPolicy) -> http_options_pb2.HttpProtocolOptions:
    explicit = http_options_pb2.HttpProtocolOptions.ExplicitHttpConfig()
    if policy.http2:
        explicit.http2_protocol_options.SetInParent()
    else:
        explicit.http_protocol_options.SetInParent()
    return http_options_pb2.HttpProtocolOptions(
        common_http_protocol_options=protocol_pb2.HttpProtocolOptions(
            idle_timeout=duration(policy.idle_timeout_ms)
        ),
        explicit_http_config=explicit,
    )


HEALTHY = health_check_pb2.HealthStatus.HEALTHY
DRAINING = health_check_pb2.HealthStatus.DRAINING


def load_assignment(name: str, backend: Backend) -> endpoint_pb2.ClusterLoadAssignment:
    lb = [
        endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address=e.address, port_value=e.port)
                )
            ),
            health_status=DRAINING if e.draining else HEALTHY,
        )
        for e in backend.endpoints
    ]
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name, endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lb)]
    )
