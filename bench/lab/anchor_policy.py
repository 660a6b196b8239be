"""The anchors' backend policies, for the backend-rollout bench alone: `xds-server` with what
it tells Envoy about endpoints, clusters and retries replaced by what Contour and Envoy
Gateway send (DESIGN.md §8), everything else ours, so the bench compares policies and
nothing else.

* contour: ready endpoints only (terminating ones dropped), no retries, Envoy's cluster
  defaults (panic threshold 50 %, 1 s merge window, 3 concurrent retries, 1 h idle);
* envoy-gateway: ready endpoints HEALTHY, terminating or not-ready ones DRAINING, retries
  on `connect-failure,reset` x10 for the route (a BackendTrafficPolicy cannot pick
  methods: what its rolling-backend e2e test configures), Envoy's cluster defaults.

Run: python -m bench.lab.anchor_policy POLICY serve ... (the xds-server command line).
"""

from __future__ import annotations

import sys
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from xds_server.model import backends
from xds_server.model.types import Backend, BackendPolicy, Endpoint, RetrySettings
from xds_server.translate import gateway, resources, routes
from xds_server.translate.common import ads_source

POLICIES = ("contour", "envoy-gateway")


def _cluster(name: str, policy: BackendPolicy) -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.DiscoveryType.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads_source()),
        connect_timeout=duration_pb2.Duration(seconds=2),
    )


def _endpoints(policy_name: str) -> Any:
    def backend(
        slices: list[dict[str, Any]], spec_port: dict[str, Any], policy: BackendPolicy
    ) -> Backend:
        ours = ORIGINAL_BACKEND(slices, spec_port, policy)
        found: set[Endpoint] = set()
        for body in slices:
            port = next(p["port"] for p in body.get("ports") or [] if p.get("name") == "http")
            for endpoint in body.get("endpoints") or []:
                ready = backends.condition_of(endpoint.get("conditions")) == backends.READY
                if policy_name == "contour" and not ready:
                    continue
                found |= {Endpoint(str(a), port, not ready) for a in endpoint["addresses"]}
        return Backend(tuple(sorted(found)), policy, False, ours.triggered)

    return backend


def _retries(policy_name: str) -> Any:
    def with_retries(
        made: route_components_pb2.Route, retry: RetrySettings | None, method: str | None
    ) -> list[route_components_pb2.Route]:
        if policy_name == "envoy-gateway" and made.HasField("route"):
            made.route.retry_policy.CopyFrom(
                route_components_pb2.RetryPolicy(
                    retry_on="connect-failure,reset",
                    num_retries=wrappers_pb2.UInt32Value(value=10),
                )
            )
        return [made]

    return with_retries


ORIGINAL_BACKEND = backends._backend


def install(policy_name: str) -> None:
    if policy_name not in POLICIES:
        raise SystemExit(f"anchor_policy: {policy_name!r} is not one of {', '.join(POLICIES)}")
    backends._backend = _endpoints(policy_name)
    resources.cluster = _cluster  # type: ignore[attr-defined]
    routes.with_retries = _retries(policy_name)  # type: ignore[attr-defined]
    gateway.with_retries = _retries(policy_name)  # type: ignore[attr-defined]


if __name__ == "__main__":
    install(sys.argv[1])
    from xds_server.cli import main

    sys.exit(main(sys.argv[2:]))
