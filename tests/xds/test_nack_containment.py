"""A NACK never takes good resources with it: over delta the stream finds the culprit by
halving the rejected response, parks only it, and everything else reaches the proxy. Driven
through the stream code alone (no timing): the proxy is a function that ACKs or NACKs."""

from __future__ import annotations

from collections.abc import Callable

import yaml
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from bench.lab.xds import endpoint_slice, ingress, rule, service
from xds_server.metrics import XdsMetrics
from xds_server.model.ingress import build
from xds_server.sources.objects import parse_documents
from xds_server.translate.listeners import EnvoyPorts
from xds_server.translate.resources import resources
from xds_server.translate.type_urls import CLUSTER, ENDPOINT, LISTENER, ROUTE, VHOST
from xds_server.xds.cache import Snapshot, SnapshotStore
from xds_server.xds.streams import DeltaStream

Refuses = Callable[[discovery_pb2.DeltaDiscoveryResponse], bool]


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
        response = stream.out.get_nowait()
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
