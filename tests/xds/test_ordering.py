"""Make before break, decided by the stream code alone (no timing involved)."""

from __future__ import annotations

import yaml
from envoy.service.discovery.v3 import discovery_pb2

from bench.lab.xds import endpoint_slice, ingress, rule, service
from xds_server.metrics import XdsMetrics
from xds_server.model import state as model
from xds_server.sources.objects import parse_documents
from xds_server.translate.listeners import EnvoyPorts
from xds_server.translate.resources import resources
from xds_server.translate.type_urls import CLUSTER, ENDPOINT, LISTENER, ROUTE, VHOST
from xds_server.xds.cache import Snapshot, SnapshotStore
from xds_server.xds.streams import DeltaStream, SotwStream


def snapshot(backend: str, serial: int) -> Snapshot:
    objects = [
        service("a", [("http", 80)]), endpoint_slice("a", "http", 9000, ["10.0.0.1"]),
        service("b", [("http", 80)]), endpoint_slice("b", "http", 9001, ["10.0.0.2"]),
        ingress("i", [rule(None, ("/", "Prefix", backend, 80))]),
    ]  # fmt: skip
    loaded = parse_documents(yaml.safe_dump_all(objects), "t.yaml")
    return Snapshot.build(resources(model.build(loaded.objects, None), EnvoyPorts()), serial)


def sent(stream: DeltaStream) -> list[discovery_pb2.DeltaDiscoveryResponse]:
    out = []
    while not stream.out.empty():
        out.append(stream.decode(stream.out.get_nowait()))
    return out


def ack(stream: DeltaStream, response: discovery_pb2.DeltaDiscoveryResponse, now: Snapshot) -> None:
    stream.handle(
        discovery_pb2.DeltaDiscoveryRequest(
            type_url=response.type_url, response_nonce=response.nonce
        ),
        now,
    )


def test_routes_to_a_new_cluster_wait_for_its_cluster_and_endpoints_acks() -> None:
    first = snapshot("a", 1)
    stream = DeltaStream(SnapshotStore(), XdsMetrics())
    for type_url in (CLUSTER, LISTENER):
        stream.handle(discovery_pb2.DeltaDiscoveryRequest(type_url=type_url), first)
    stream.handle(
        discovery_pb2.DeltaDiscoveryRequest(
            type_url=ENDPOINT, resource_names_subscribe=["default/a/http"]
        ),
        first,
    )
    stream.handle(
        discovery_pb2.DeltaDiscoveryRequest(
            type_url=ROUTE, resource_names_subscribe=["ingress_http"]
        ),
        first,
    )
    stream.handle(discovery_pb2.DeltaDiscoveryRequest(type_url=VHOST), first)  # VHDS
    for _ in range(3):  # sync, ACKing everything
        for response in sent(stream):
            ack(stream, response, first)

    second = snapshot("b", 2)  # the route moves to a cluster the proxy does not have
    stream.push(second)
    pushed = sent(stream)
    assert [r.type_url for r in pushed] == [CLUSTER], "no route before its cluster is warm"
    ack(stream, pushed[0], second)
    assert sent(stream) == [], "still waiting: the proxy has not asked for b's endpoints"
    stream.handle(
        discovery_pb2.DeltaDiscoveryRequest(
            type_url=ENDPOINT, resource_names_subscribe=["default/b/http"]
        ),
        second,
    )
    (endpoints,) = sent(stream)
    assert endpoints.type_url == ENDPOINT
    ack(stream, endpoints, second)
    (routes,) = sent(stream)
    assert routes.type_url == VHOST, "routes (virtual hosts, over delta) follow once b is warm"
    ack(stream, routes, second)
    removals = [(r.type_url, list(r.removed_resources)) for r in sent(stream)]
    assert removals == [(CLUSTER, ["default/a/http"]), (ENDPOINT, ["default/a/http"])], (
        "a and its endpoints go only after routes without it are ACKed"
    )


def test_a_sotw_proxy_resuming_before_the_first_snapshot_is_sent_nothing_it_has() -> None:
    """A restarted server hears a reconnecting proxy's versions before its first snapshot:
    they are judged against that snapshot when it comes, not against the empty one."""
    first = snapshot("a", 1)
    stream = SotwStream(SnapshotStore(), XdsMetrics())
    for type_url in (CLUSTER, LISTENER):
        stream.handle(
            discovery_pb2.DiscoveryRequest(type_url=type_url, version_info=first.version(type_url)),
            Snapshot({}, 0),
        )
    stream.push(first)
    assert sent(stream) == []  # type: ignore[arg-type]
    stream.push(snapshot("b", 2))  # a real change is still sent
    assert [r.type_url for r in sent(stream)] == [CLUSTER]  # type: ignore[arg-type]
