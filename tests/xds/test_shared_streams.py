"""Many streams, one build: every proxy decodes exactly what the snapshot holds for its
subscriptions, though the bodies are built once and shared (each stream adds its nonce).
Driven through the stream code alone (no timing): each proxy is a loop that subscribes as
Envoy does and ACKs everything."""

from __future__ import annotations

from typing import Any

import yaml
from envoy.service.discovery.v3 import discovery_pb2

from bench.lab.xds import endpoint_slice, ingress, rule, service
from xds_server.metrics import XdsMetrics
from xds_server.model.state import build
from xds_server.sources.objects import parse_documents
from xds_server.translate.listeners import EnvoyPorts
from xds_server.translate.resources import resources
from xds_server.translate.type_urls import CLUSTER, ENDPOINT, LISTENER, ROUTE, ROUTE_VHDS, VHOST
from xds_server.xds.cache import Snapshot, SnapshotStore
from xds_server.xds.streams import DeltaStream, SotwStream

PROXIES = 30


def snapshot(serial: int, flipped: int | None = None, hosts: int = 12) -> Snapshot:
    objects = [
        service("a", [("http", 80)]), endpoint_slice("a", "http", 9000, ["10.0.0.1"]),
        service("b", [("http", 80)]), endpoint_slice("b", "http", 9001, ["10.0.0.2"]),
    ]  # fmt: skip
    for n in range(hosts):
        backend = "b" if n in (0, flipped) else "a"  # h0 keeps cluster b in use
        objects.append(ingress(f"i{n}", [rule(f"h{n}.example", ("/", "Prefix", backend, 80))]))
    loaded = parse_documents(yaml.safe_dump_all(objects), "t.yaml")
    return Snapshot.build(resources(build(loaded.objects, None), EnvoyPorts()), serial)


class Player:
    """Plays Envoy on a stream: asks for clusters and listeners, then answers each response
    (`_take`), keeping every response's bytes as sent."""

    request: Any

    def __init__(self, stream: DeltaStream | SotwStream) -> None:
        self.stream = stream
        self.has: dict[str, dict[str, bytes]] = {}
        self.bodies: list[bytes] = []
        self.nonces: list[str] = []

    def start(self, now: Snapshot) -> None:
        for type_url in (CLUSTER, LISTENER):
            self.stream.handle(self.request(type_url=type_url), now)
        self.play(now)

    def play(self, now: Snapshot) -> None:
        while not self.stream.out.empty():
            outgoing = self.stream.out.get_nowait()
            assert outgoing is not None
            self.bodies.append(outgoing)
            response = self.stream.decode(outgoing)
            self.nonces.append(response.nonce)
            self._take(response, now)

    def _take(self, response: Any, now: Snapshot) -> None:
        raise NotImplementedError


class DeltaProxy(Player):
    """What an Envoy over delta holds, rebuilt from the bytes it was sent."""

    request = discovery_pb2.DeltaDiscoveryRequest

    def __init__(self, configs: list[str]) -> None:
        super().__init__(DeltaStream(SnapshotStore(), XdsMetrics()))
        self.configs = configs

    def _take(self, response: Any, now: Snapshot) -> None:
        held = self.has.setdefault(response.type_url, {})
        for resource in response.resources:
            held[resource.name] = resource.resource.value
        for name in response.removed_resources:
            held.pop(name, None)
        type_url = response.type_url
        self.stream.handle(self.request(type_url=type_url, response_nonce=response.nonce), now)
        names = [r.name for r in response.resources]
        if type_url == CLUSTER and names:
            self._ask(ENDPOINT, names, now)
        elif type_url == LISTENER and names and ROUTE not in self.has:
            self._ask(ROUTE, self.configs, now)
        elif type_url == ROUTE and names and VHOST not in self.has:
            self.stream.handle(self.request(type_url=VHOST), now)

    def _ask(self, type_url: str, names: list[str], now: Snapshot) -> None:
        self.stream.handle(self.request(type_url=type_url, resource_names_subscribe=names), now)


class SotwProxy(Player):
    """What an Envoy over state of the world holds: the last response of each type."""

    request = discovery_pb2.DiscoveryRequest

    def __init__(self) -> None:
        super().__init__(SotwStream(SnapshotStore(), XdsMetrics()))
        self.names: dict[str, list[str]] = {}

    def _take(self, response: Any, now: Snapshot) -> None:
        type_url = response.type_url
        self.has[type_url] = {_name(type_url, r.value): r.value for r in response.resources}
        ack = self.request(
            type_url=type_url,
            version_info=response.version_info,
            response_nonce=response.nonce,
            resource_names=self.names.get(type_url, []),
        )
        self.stream.handle(ack, now)
        if type_url == CLUSTER:
            self._ask(ENDPOINT, sorted(self.has[CLUSTER]), now)
        elif type_url == LISTENER and ROUTE not in self.names:
            self._ask(ROUTE, ["ingress_http", "ingress_https"], now)

    def _ask(self, type_url: str, names: list[str], now: Snapshot) -> None:
        if self.names.get(type_url) != names:
            self.names[type_url] = names
            self.stream.handle(self.request(type_url=type_url, resource_names=names), now)


def _name(type_url: str, value: bytes) -> str:
    """A resource's name: field 1 of each of these messages (endpoints: cluster_name)."""
    assert value[0] == 0x0A, type_url
    length, at = value[1], 2
    if length & 0x80:
        length, at = (length & 0x7F) | (value[2] << 7), 3
    return value[at : at + length].decode()


def expected(now: Snapshot, type_url: str, names: list[str] | None = None) -> dict[str, bytes]:
    entries = now.entries(type_url)
    return {n: e.resource.value for n, e in entries.items() if names is None or n in names}


def assert_delta_holds(proxy: DeltaProxy, now: Snapshot) -> None:
    for type_url in (CLUSTER, ENDPOINT, LISTENER):
        assert proxy.has[type_url] == expected(now, type_url)
    assert proxy.has[ROUTE] == {
        n: e.resource.value for n, e in now.entries(ROUTE_VHDS).items() if n in proxy.configs
    }
    vhosts = {n: v for n, v in expected(now, VHOST).items() if n.split("/")[0] in proxy.configs}
    assert proxy.has[VHOST] == vhosts


def test_delta_streams_sharing_one_build_each_decode_their_subscriptions() -> None:
    first = snapshot(1)
    proxies = [DeltaProxy(["ingress_http", "ingress_https"]) for _ in range(PROXIES)]
    proxies += [DeltaProxy(["ingress_http"]) for _ in range(PROXIES)]  # no HTTPS listener
    for proxy in proxies:
        proxy.start(first)
        assert_delta_holds(proxy, first)
    # Shared: proxies subscribed alike were sent the very same bytes (nonces included: each
    # stream's are still its own sequence); proxies subscribed otherwise got other ones.
    alike = proxies[:PROXIES]
    for n, outgoing in enumerate(alike[0].bodies):
        assert all(p.bodies[n] is outgoing for p in alike)
    for proxy in proxies:
        assert len(set(proxy.nonces)) == len(proxy.nonces)
    assert proxies[0].has[VHOST] != proxies[-1].has[VHOST]

    second = snapshot(2, flipped=3)  # one virtual host changes
    for proxy in proxies:
        proxy.bodies.clear()
        proxy.stream.push(second)
        proxy.play(second)
        assert_delta_holds(proxy, second)
        assert [proxy.stream.decode(b).type_url for b in proxy.bodies] == [VHOST]
        assert proxy.stream.converged(second)
    assert all(p.bodies[0] is alike[0].bodies[0] for p in alike)


def test_sotw_streams_sharing_one_build_each_decode_the_snapshot() -> None:
    first = snapshot(1)
    proxies = [SotwProxy() for _ in range(PROXIES)]
    for proxy in proxies:
        proxy.start(first)
    second = snapshot(2, flipped=5)
    for now in (first, second):
        for proxy in proxies:
            if now is second:
                proxy.bodies.clear()
                proxy.stream.push(now)
                proxy.play(now)
            for type_url in (CLUSTER, ENDPOINT, LISTENER):
                assert proxy.has[type_url] == expected(now, type_url)
            assert proxy.has[ROUTE] == expected(now, ROUTE)  # full route configurations
            assert proxy.stream.converged(now)
        bodies = [p.bodies for p in proxies]
        for n, outgoing in enumerate(bodies[0]):
            assert all(b[n] is outgoing for b in bodies)


def test_a_proxy_that_rejects_leaves_the_shared_path_and_the_others_stay_on_it() -> None:
    first = snapshot(1)
    proxies = [DeltaProxy(["ingress_http", "ingress_https"]) for _ in range(3)]
    for proxy in proxies:
        proxy.start(first)
    second = snapshot(2, flipped=7)
    rejecting = proxies[0]
    rejecting.stream.push(second)
    outgoing = rejecting.stream.out.get_nowait()
    response = rejecting.stream.decode(outgoing)
    nack = discovery_pb2.DeltaDiscoveryRequest(type_url=VHOST, response_nonce=response.nonce)
    nack.error_detail.message = "refused"
    rejecting.stream.handle(nack, second)
    assert rejecting.stream.types[VHOST].at is None  # its own dicts now
    probe = rejecting.stream.decode(rejecting.stream.out.get_nowait())  # halving begins
    assert 0 < len(probe.resources) < len(response.resources)
    for proxy in proxies[1:]:
        proxy.stream.push(second)
        proxy.play(second)
        assert_delta_holds(proxy, second)
        assert proxy.stream.types[VHOST].at is second.entries(VHOST)
