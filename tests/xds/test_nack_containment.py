"""A NACK never takes good resources with it: the stream finds the culprit by halving what
was rejected (delta: the response's resources; SotW: the virtual hosts that changed in the
route configurations), parks only it, and everything else reaches the proxy. Driven through
the stream code alone (no timing): the proxy is a function that ACKs or NACKs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from bench.lab.xds import endpoint_slice, ingress, rule, service
from xds_server.metrics import XdsMetrics
from xds_server.model.state import build
from xds_server.sources.objects import parse_documents
from xds_server.translate.listeners import EnvoyPorts
from xds_server.translate.resources import resources
from xds_server.translate.type_urls import CLUSTER, ENDPOINT, LISTENER, ROUTE, VHOST
from xds_server.xds.cache import Snapshot, SnapshotStore
from xds_server.xds.streams import DeltaStream, SotwStream

Refuses = Callable[[Any], bool]


def snapshot(hosts: int, serial: int, path: str = "/") -> Snapshot:
    objects = [service("a", [("http", 80)]), endpoint_slice("a", "http", 9000, ["10.0.0.1"])]
    objects += [
        ingress(f"i{n}", [rule(f"h{n}.example", (path, "Prefix", "a", 80))]) for n in range(hosts)
    ]
    loaded = parse_documents(yaml.safe_dump_all(objects), "t.yaml")
    return Snapshot.build(resources(build(loaded.objects, None), EnvoyPorts()), serial)


def proxy(stream: DeltaStream, now: Snapshot, refuses: Refuses) -> list[str]:
    """Play Envoy until the stream has nothing more to say: subscribe as Envoy does over
    delta, ACK every response except those `refuses` NACKs. Returns what was NACKed."""
    nacked: list[str] = []
    for type_url in (CLUSTER, LISTENER):
        stream.handle(discovery_pb2.DeltaDiscoveryRequest(type_url=type_url), now)
    for _ in range(200):
        if stream.out.empty():
            return nacked
        response = stream.decode(stream.out.get_nowait())
        names = [r.name for r in response.resources]
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=response.type_url, response_nonce=response.nonce
        )
        if refuses(response):
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message="refused\nreason"))
            nacked.append(",".join(sorted(names)))
        stream.handle(request, now)
        follow = {CLUSTER: ENDPOINT, LISTENER: ROUTE}.get(response.type_url)
        if follow and names:
            subscribe = names if follow == ENDPOINT else ["ingress_http", "ingress_https"]
            stream.handle(
                discovery_pb2.DeltaDiscoveryRequest(
                    type_url=follow, resource_names_subscribe=subscribe
                ),
                now,
            )
        if response.type_url == ROUTE and names:
            stream.handle(discovery_pb2.DeltaDiscoveryRequest(type_url=VHOST), now)
    raise AssertionError("the stream never went quiet")


def refusing(name: str) -> Refuses:
    return lambda response: any(r.name == name for r in response.resources)


def test_one_refused_virtual_host_among_many_parks_only_itself() -> None:
    now = snapshot(16, 1)
    stream = DeltaStream(SnapshotStore(), XdsMetrics())
    nacked = proxy(stream, now, refusing("ingress_http/h5.example"))
    vhosts = stream.types[VHOST]
    wanted = set(now.entries(VHOST))
    assert set(vhosts.acked) == wanted - {"ingress_http/h5.example"}, "every good host arrives"
    assert {name for name, _ in vhosts.parked} == {"ingress_http/h5.example"}
    assert len(nacked) <= 2 * 5 + 1, f"halving finds it in about 2·log2(32) tries: {nacked}"
    assert stream.out.empty()


def test_a_parked_culprit_is_not_sent_again_until_its_content_changes() -> None:
    first = snapshot(4, 1)
    stream = DeltaStream(SnapshotStore(), XdsMetrics())
    proxy(stream, first, refusing("ingress_http/h2.example"))
    stream.push(first)
    assert stream.out.empty(), "the NACKed version is parked, not resent"
    second = snapshot(4, 2, path="/v2")  # every host changes, the culprit's content too
    stream.push(second)
    nacked = proxy(stream, second, lambda response: False)
    assert nacked == []
    assert set(stream.types[VHOST].acked.items()) == {
        (name, entry.version) for name, entry in second.entries(VHOST).items()
    }, "new content is judged afresh and accepted"


def test_two_culprits_are_both_found() -> None:
    now = snapshot(8, 1)
    stream = DeltaStream(SnapshotStore(), XdsMetrics())
    bad = {"ingress_http/h1.example", "ingress_https/h6.example"}
    proxy(stream, now, lambda response: any(r.name in bad for r in response.resources))
    vhosts = stream.types[VHOST]
    assert {name for name, _ in vhosts.parked} == bad
    assert set(vhosts.acked) == set(now.entries(VHOST)) - bad


def sotw_proxy(stream: SotwStream, now: Snapshot, refuses: Refuses) -> list[str]:
    """Play a state-of-the-world Envoy: NACK a route configuration response when `refuses`
    says so, ACK everything else; subscribe to endpoints and routes as Envoy does."""
    nacked: list[str] = []
    for type_url in (CLUSTER, LISTENER):
        stream.handle(discovery_pb2.DiscoveryRequest(type_url=type_url), now)
    subscribed: dict[str, list[str]] = {}
    for _ in range(200):
        if stream.out.empty():
            return nacked
        response = stream.decode(stream.out.get_nowait())
        request = discovery_pb2.DiscoveryRequest(
            type_url=response.type_url,
            response_nonce=response.nonce,
            resource_names=subscribed.get(response.type_url, []),
        )
        if refuses(response):
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message="refused"))
            nacked.append(response.version_info)
        else:
            request.version_info = response.version_info
        stream.handle(request, now)
        names = [_name(r.value, response.type_url) for r in response.resources]
        follow = {CLUSTER: ENDPOINT, LISTENER: ROUTE}.get(response.type_url)
        if follow and names and follow not in subscribed:
            subscribed[follow] = names if follow == ENDPOINT else ["ingress_http", "ingress_https"]
            stream.handle(
                discovery_pb2.DiscoveryRequest(type_url=follow, resource_names=subscribed[follow]),
                now,
            )
    raise AssertionError("the stream never went quiet")


def _name(value: bytes, type_url: str) -> str:
    if type_url == CLUSTER:
        name: str = cluster_pb2.Cluster.FromString(value).name
        return name
    return ""


def vhosts_of(response: discovery_pb2.DiscoveryResponse) -> set[str]:
    return {
        vhost.name
        for resource in response.resources
        for vhost in route_pb2.RouteConfiguration.FromString(resource.value).virtual_hosts
    }


def refusing_route(name: str) -> Refuses:
    return lambda response: response.type_url == ROUTE and name in vhosts_of(response)


def acked_vhosts(stream: SotwStream) -> dict[str, str]:
    return {name: entry.version for name, entry in stream.types[ROUTE].acked_vhosts.items()}


def test_sotw_one_refused_virtual_host_parks_only_itself_and_changes_keep_flowing() -> None:
    first = snapshot(16, 1)
    stream = SotwStream(SnapshotStore(), XdsMetrics())
    culprit = "ingress_https/h9.example"
    nacked = sotw_proxy(stream, first, refusing_route(culprit))
    good = {n: e.version for n, e in first.entries(VHOST).items() if n != culprit}
    assert acked_vhosts(stream) == good, "every good host arrives; the culprit never does"
    assert len(nacked) <= 2 * 5 + 1
    second = snapshot(16, 2, path="/v2")  # every host changes, the culprit's content too
    stream.push(second)
    assert sotw_proxy(stream, second, lambda response: False) == []
    assert acked_vhosts(stream) == {n: e.version for n, e in second.entries(VHOST).items()}
    assert not stream.types[ROUTE].parked, "new content is judged afresh"
