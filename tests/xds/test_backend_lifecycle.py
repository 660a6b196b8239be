"""Backends that come and go: EndpointSlice conditions -> Envoy host health, the clusters
and retry policies every route gets, and the per-Service overrides (DESIGN.md §8)."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from bench.lab.xds import gateway_objects, ingress, rule, service
from tests.xds.test_model import objects
from xds_server.model.backends import DRAINING, OUT, READY, condition_of
from xds_server.model.gateway import GatewaySettings
from xds_server.model.state import build
from xds_server.model.types import Model
from xds_server.translate.clusters import HTTP_OPTIONS
from xds_server.translate.listeners import EnvoyPorts
from xds_server.translate.resources import resources
from xds_server.translate.type_urls import CLUSTER, ENDPOINT, VHOST

PORTS = EnvoyPorts("127.0.0.1", 8080, 8443)
HEALTHY = health_check_pb2.HealthStatus.HEALTHY
ENVOY_DRAINING = health_check_pb2.HealthStatus.DRAINING


@pytest.mark.parametrize(
    ("conditions", "becomes"),
    [
        (None, READY),  # no conditions: ready (nil means true)
        ({}, READY),
        ({"ready": True}, READY),
        ({"ready": False}, OUT),
        ({"ready": False, "serving": True, "terminating": True}, DRAINING),
        ({"serving": True, "terminating": True, "ready": False}, DRAINING),
        ({"ready": False, "terminating": True}, OUT),  # serving nil: as ready, false
        ({"ready": False, "serving": False, "terminating": True}, OUT),
        ({"ready": False, "serving": True}, OUT),  # serving but not terminating: not ready
        ({"ready": True, "terminating": True}, READY),
    ],
)
def test_conditions_are_read_as_kubernetes_defines_them(
    conditions: dict[str, Any] | None, becomes: str
) -> None:
    assert condition_of(conditions) == becomes


def pods_slice(*pods: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "shop-x1",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "shop"},
            "annotations": {
                "endpoints.kubernetes.io/last-change-trigger-time": "2026-12-06T04:00:00Z"
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [{"addresses": [ip], "conditions": c} for ip, c in pods],
    }


def shop(*pods: tuple[str, dict[str, Any]], annotations: dict[str, str] | None = None) -> Model:
    svc = service("shop", [("http", 80)])
    svc["metadata"]["annotations"] = annotations or {}
    return build(
        objects(svc, pods_slice(*pods), ingress("shop", [rule(None, ("/", "Prefix", "shop", 80))])),
        None,
    )


TERMINATING = {"ready": False, "serving": True, "terminating": True}
GONE_UNREADY = {"ready": False, "serving": False, "terminating": True}


def health(model: Model) -> dict[str, int]:
    (assignment,) = resources(model, PORTS)[ENDPOINT].values()
    assert isinstance(assignment, endpoint_pb2.ClusterLoadAssignment)
    return {
        e.endpoint.address.socket_address.address: e.health_status
        for group in assignment.endpoints
        for e in group.lb_endpoints
    }


def test_a_terminating_pod_still_serving_is_draining_beside_the_ready_ones() -> None:
    model = shop(
        ("10.0.0.1", {"ready": True}), ("10.0.0.2", TERMINATING), ("10.0.0.3", GONE_UNREADY)
    )
    assert health(model) == {"10.0.0.1": HEALTHY, "10.0.0.2": ENVOY_DRAINING}
    (backend,) = model.clusters.values()
    assert not backend.fallback
    assert backend.triggered is not None


def test_with_no_ready_endpoint_the_terminating_serving_ones_take_requests() -> None:
    """KEP-1669's fallback: a single replica being replaced keeps answering."""
    model = shop(("10.0.0.2", TERMINATING), ("10.0.0.3", GONE_UNREADY))
    assert health(model) == {"10.0.0.2": HEALTHY}
    (backend,) = model.clusters.values()
    assert backend.fallback


def test_an_address_ready_in_one_slice_is_ready() -> None:
    model = shop(("10.0.0.1", TERMINATING), ("10.0.0.1", {"ready": True}))
    assert health(model) == {"10.0.0.1": HEALTHY}


def the_cluster(model: Model) -> cluster_pb2.Cluster:
    (made,) = resources(model, PORTS)[CLUSTER].values()
    assert isinstance(made, cluster_pb2.Cluster)
    return made


def http_options(made: cluster_pb2.Cluster) -> http_protocol_options_pb2.HttpProtocolOptions:
    options = http_protocol_options_pb2.HttpProtocolOptions()
    made.typed_extension_protocol_options[HTTP_OPTIONS].Unpack(options)
    return options


def test_every_cluster_has_no_panic_no_merge_window_a_retry_budget_and_a_short_idle() -> None:
    made = the_cluster(shop(("10.0.0.1", {})))
    assert made.common_lb_config.HasField("healthy_panic_threshold")
    assert made.common_lb_config.healthy_panic_threshold.value == 0
    assert made.common_lb_config.HasField("update_merge_window")
    assert made.common_lb_config.update_merge_window.ToMilliseconds() == 0
    (threshold,) = made.circuit_breakers.thresholds
    assert threshold.retry_budget.budget_percent.value == 25
    options = http_options(made)
    assert options.common_http_protocol_options.idle_timeout.ToMilliseconds() == 4000
    assert options.explicit_http_config.HasField("http_protocol_options")
    assert not made.HasField("round_robin_lb_config")


def test_a_service_overrides_idle_timeout_and_asks_for_slow_start() -> None:
    made = the_cluster(
        shop(
            ("10.0.0.1", {}),
            annotations={
                "envoy-lifecycle.io/upstream-idle-timeout": "1500ms",
                "envoy-lifecycle.io/slow-start-window": "30s",
            },
        )
    )
    assert http_options(made).common_http_protocol_options.idle_timeout.ToMilliseconds() == 1500
    assert made.round_robin_lb_config.slow_start_config.slow_start_window.seconds == 30


def test_an_h2c_service_port_is_spoken_as_http2() -> None:
    svc = service("shop", [("http", 80)])
    svc["spec"]["ports"][0]["appProtocol"] = "kubernetes.io/h2c"
    model = build(
        objects(
            svc,
            pods_slice(("10.0.0.1", {})),
            ingress("s", [rule(None, ("/", "Prefix", "shop", 80))]),
        ),
        None,
    )
    assert http_options(the_cluster(model)).explicit_http_config.HasField("http2_protocol_options")


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        ("envoy-lifecycle.io/retries", "many"),
        ("envoy-lifecycle.io/retries", "11"),
        ("envoy-lifecycle.io/retry-reset-methods", "get,post"),
        ("envoy-lifecycle.io/upstream-idle-timeout", "4 s"),
        ("envoy-lifecycle.io/upstream-idle-timeout", "2h"),
        ("envoy-lifecycle.io/slow-start-window", "-1s"),
    ],
)
def test_an_unreadable_annotation_rejects_the_routes_to_that_service(
    annotation: str, value: str
) -> None:
    model = shop(("10.0.0.1", {}), annotations={annotation: value})
    assert not model.clusters
    (error,) = model.errors
    assert annotation in error
    assert "Service default/shop" in error
    assert "Ingress default/shop" in error


def envoy_routes(model: Model) -> list[route_components_pb2.Route]:
    vhost = resources(model, PORTS)[VHOST]["ingress_http/*"]
    assert isinstance(vhost, route_components_pb2.VirtualHost)
    return list(vhost.routes)


def test_resets_are_retried_for_safe_methods_only_connection_failures_for_all() -> None:
    safe, rest = envoy_routes(shop(("10.0.0.1", {})))
    assert [h.name for h in safe.match.headers] == [":method"]
    assert safe.match.headers[0].string_match.safe_regex.regex == "GET|HEAD|OPTIONS|TRACE"
    assert safe.route.retry_policy.retry_on.split(",") == [
        "connect-failure", "refused-stream", "reset-before-request", "reset",
    ]  # fmt: skip
    assert not rest.match.headers
    assert "reset" not in rest.route.retry_policy.retry_on.split(",")
    assert "connect-failure" in rest.route.retry_policy.retry_on
    for made in (safe, rest):
        assert made.match.prefix == "/"
        assert made.route.retry_policy.num_retries.value == 2
        (predicate,) = made.route.retry_policy.retry_host_predicate
        assert predicate.name == "envoy.retry_host_predicates.previous_hosts"


def test_a_service_can_turn_retries_off_or_name_its_idempotent_methods() -> None:
    (only,) = envoy_routes(shop(("10.0.0.1", {}), annotations={"envoy-lifecycle.io/retries": "0"}))
    assert not only.route.HasField("retry_policy")
    safe, _ = envoy_routes(
        shop(("10.0.0.1", {}), annotations={"envoy-lifecycle.io/retry-reset-methods": "GET,PUT"})
    )
    assert safe.match.headers[0].string_match.safe_regex.regex == "GET|PUT"
    (only,) = envoy_routes(
        shop(("10.0.0.1", {}), annotations={"envoy-lifecycle.io/retry-reset-methods": ""})
    )
    assert only.route.retry_policy.retry_on == "connect-failure,refused-stream,reset-before-request"


def gateway_routes(rule_spec: dict[str, Any]) -> list[route_components_pb2.Route]:
    http_route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": "default"},
        "spec": {
            "parentRefs": [{"name": "edge"}],
            "rules": [{**rule_spec, "backendRefs": [{"name": "shop", "port": 80}]}],
        },
    }
    model = build(
        objects(
            service("shop", [("http", 80)]),
            pods_slice(("10.0.0.1", {})),
            *gateway_objects(8081),
            http_route,
        ),
        None,
        GatewaySettings(),
    )
    assert not model.errors, model.errors
    return [
        r
        for v in resources(model, PORTS)[VHOST].values()
        if isinstance(v, route_components_pb2.VirtualHost) and v.name.startswith("gateway")
        for r in v.routes
    ]


def test_an_httproute_retry_sets_attempts_backoff_and_codes_for_every_method() -> None:
    safe, rest = gateway_routes({"retry": {"attempts": 5, "backoff": "100ms", "codes": [503, 502]}})
    for made in (safe, rest):
        policy = made.route.retry_policy
        assert policy.num_retries.value == 5
        assert list(policy.retriable_status_codes) == [502, 503]
        assert "retriable-status-codes" in policy.retry_on
        assert policy.retry_back_off.base_interval.ToMilliseconds() == 100
    assert "reset" in safe.route.retry_policy.retry_on.split(",")
    assert "reset" not in rest.route.retry_policy.retry_on.split(",")


@pytest.mark.parametrize(("method", "resets"), [("GET", True), ("POST", False)])
def test_a_route_matching_one_method_stays_one_route(method: str, resets: bool) -> None:
    (only,) = gateway_routes({"matches": [{"method": method}]})
    assert ("reset" in only.route.retry_policy.retry_on.split(",")) is resets


def test_an_endpoint_change_is_timed_once_not_again_when_only_the_service_changes() -> None:
    from xds_server.pipeline import Pipeline
    from xds_server.sources.objects import Loaded

    pipeline = Pipeline(None, PORTS)
    svc = service("shop", [("http", 80)])
    route = ingress("shop", [rule(None, ("/", "Prefix", "shop", 80))])
    first = pipeline.build(Loaded(objects(svc, pods_slice(("10.0.0.1", {})), route)), 1)
    assert len(first.endpoints.triggered) == 1
    svc["metadata"]["annotations"] = {"envoy-lifecycle.io/slow-start-window": "10s"}
    second = pipeline.build(Loaded(objects(svc, pods_slice(("10.0.0.1", {})), route)), 2)
    assert second.snapshot is not None
    assert second.endpoints.triggered == []


def test_the_policy_most_routes_carry_is_sent_once_on_the_virtual_host() -> None:
    no_retries = service("quiet", [("http", 80)])
    no_retries["metadata"]["annotations"] = {"envoy-lifecycle.io/retries": "0"}
    paths = [(f"/p{n}", "Prefix", "shop", 80) for n in range(5)]
    model = build(
        objects(
            service("shop", [("http", 80)]),
            pods_slice(("10.0.0.1", {})),
            ingress("shop", [rule("shop.example", *paths)]),
            no_retries,
            ingress("mixed", [rule("mixed.example", ("/a", "Prefix", "quiet", 80), *paths)]),
        ),
        None,
    )
    vhosts = resources(model, PORTS)[VHOST]
    shop_host = vhosts["ingress_http/shop.example"]
    assert isinstance(shop_host, route_components_pb2.VirtualHost)
    assert shop_host.HasField("retry_policy")
    # What each route retries on is what it did before: its own policy, or the host's.
    effective = [
        (r.route.retry_policy if r.route.HasField("retry_policy") else shop_host.retry_policy)
        for r in shop_host.routes
    ]
    resets = ["reset" in p.retry_on.split(",") for p in effective]
    assert resets == [True, False] * 5
    assert sum(r.route.HasField("retry_policy") for r in shop_host.routes) == 5
    # A host with a route that must not retry keeps every policy where it is: that route
    # would take the host's otherwise.
    mixed = vhosts["ingress_http/mixed.example"]
    assert isinstance(mixed, route_components_pb2.VirtualHost)
    assert not mixed.HasField("retry_policy")
    for made in mixed.routes:
        assert made.route.HasField("retry_policy") is ("quiet" not in made.route.cluster)
