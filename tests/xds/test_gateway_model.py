"""The Gateway API model's own rules, without Envoy: hostname intersection (a wildcard covers
any depth, not its own suffix), label selectors, and the address pool (stable per Gateway,
distinct between Gateways, the same whatever the order objects came in)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from xds_server.model.gateway import GatewayInputs, build_gateways, intersect, selects
from xds_server.sources.objects import KubeObject


@pytest.mark.parametrize(
    ("listener", "route", "served"),
    [
        (None, [], ["*"]),
        ("a.com", [], ["a.com"]),
        (None, ["x.io", "*.y.io"], ["x.io", "*.y.io"]),
        ("very.specific.com", ["non.matching.com", "very.specific.com"], ["very.specific.com"]),
        (
            "*.wildcard.io",
            ["wildcard.io", "foo.wildcard.io", "a.b.wildcard.io"],
            ["foo.wildcard.io", "a.b.wildcard.io"],
        ),
        ("very.specific.com", ["*.specific.com"], ["very.specific.com"]),
        ("*.anotherwildcard.io", ["*.anotherwildcard.io"], ["*.anotherwildcard.io"]),
        ("*.io", ["*.a.io"], ["*.a.io"]),
        ("specific.but.wrong.com", ["wildcard.io"], []),
    ],
)
def test_hostname_intersection(listener: str | None, route: list[str], served: list[str]) -> None:
    assert intersect(listener, route) == served


def test_label_selectors() -> None:
    labels = {"gateway-conformance": "backend", "team": "a"}
    assert selects({"matchLabels": {"gateway-conformance": "backend"}}, labels)
    assert not selects({"matchLabels": {"gateway-conformance": "infra"}}, labels)
    assert selects(
        {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]}, labels
    )
    assert not selects(
        {"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]}, labels
    )
    assert selects({"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]}, labels)
    assert not selects({"matchExpressions": [{"key": "x", "operator": "Exists"}]}, labels)


@pytest.mark.parametrize(
    "expression",
    [
        {"key": "team", "operator": "in", "values": ["a"]},  # operators are case-sensitive
        {"key": "team", "operator": "Equals", "values": ["a"]},
        {"key": "team", "operator": "NotIn", "values": []},  # In and NotIn need values
        {"key": "x", "operator": "DoesNotExist", "values": ["a"]},  # these take none
        {"key": "team"},
    ],
)
def test_a_selector_the_api_would_not_parse_selects_no_namespace(
    expression: dict[str, Any],
) -> None:
    for labels in ({"team": "a"}, {"team": "b"}, {}):
        assert not selects({"matchExpressions": [expression]}, labels), labels


def _object(kind: str, name: str, namespace: str, spec: dict[str, Any]) -> KubeObject:
    body = {"kind": kind, "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    return KubeObject("gateway.networking.k8s.io/v1", kind, namespace, name, body, "test")


def _addresses(names: list[str], pool: str = "10.96.200.0/24") -> dict[str, str]:
    objects = [
        _object(
            "GatewayClass",
            "c",
            "default",
            {"controllerName": "envoy-lifecycle.io/gateway-controller"},
        )
    ]
    listener = {"name": "http", "port": 80, "protocol": "HTTP"}
    objects += [
        _object("Gateway", n, "ns", {"gatewayClassName": "c", "listeners": [listener]})
        for n in names
    ]
    inputs = GatewayInputs({o.key: o for o in objects}, pool=ipaddress.ip_network(pool))
    part = build_gateways(inputs, {}, {})
    return {n: part.status[f"Gateway/ns/{n}"]["addresses"][0]["value"] for n in names}


def test_pool_addresses_are_stable_distinct_and_order_free() -> None:
    names = [f"gw{i}" for i in range(20)]
    first = _addresses(names)
    assert len(set(first.values())) == 20
    assert all(
        ipaddress.ip_address(a) in ipaddress.ip_network("10.96.200.0/24") for a in first.values()
    )
    assert _addresses(list(reversed(names))) == first
    pair = _addresses(["gw0", "gw1"])
    assert pair["gw0"] == _addresses(["gw0"])["gw0"], "another Gateway does not move it"


def test_a_listener_on_the_ingress_port_is_port_unavailable() -> None:
    """Envoy already listens there for Ingress (on every address): a second socket would be
    refused, and the whole listener update with it."""
    cls = _object("GatewayClass", "c", "default",
                  {"controllerName": "envoy-lifecycle.io/gateway-controller"})  # fmt: skip
    listeners = [
        {"name": "taken", "port": 8080, "protocol": "HTTP"},
        {"name": "free", "port": 9090, "protocol": "HTTP"},
    ]
    gateway = _object("Gateway", "g", "ns", {"gatewayClassName": "c", "listeners": listeners})
    inputs = GatewayInputs(
        {o.key: o for o in (cls, gateway)},
        envoy_address="10.0.0.7",
        reserved=(("0.0.0.0", 8080), ("0.0.0.0", 8443)),
    )
    part = build_gateways(inputs, {}, {})
    status = {x["name"]: x for x in part.status["Gateway/ns/g"]["listeners"]}
    accepted = {x["type"]: (x["status"], x["reason"]) for x in status["taken"]["conditions"]}
    assert accepted["Accepted"] == ("False", "PortUnavailable")
    assert set(part.ports) == {("10.0.0.7", 9090)}


def test_replace_prefix_match_needs_a_prefix_match() -> None:
    """With an Exact match there is no matched prefix to replace: the route is refused
    (UnsupportedValue), not served with a rewrite that means nothing."""
    cls = _object("GatewayClass", "c", "default",
                  {"controllerName": "envoy-lifecycle.io/gateway-controller"})  # fmt: skip
    listener = {"name": "http", "port": 80, "protocol": "HTTP"}
    gateway = _object("Gateway", "g", "ns", {"gatewayClassName": "c", "listeners": [listener]})
    path = {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}
    rewrite = {"type": "URLRewrite", "urlRewrite": {"path": path}}
    route = _object(
        "HTTPRoute",
        "r",
        "ns",
        {
            "parentRefs": [{"name": "g"}],
            "rules": [{"matches": [{"path": {"type": "Exact", "value": "/a"}}],
                       "filters": [rewrite]}],
        },
    )  # fmt: skip
    part = build_gateways(GatewayInputs({o.key: o for o in (cls, gateway, route)}), {}, {})
    (parent,) = part.status["HTTPRoute/ns/r"]["parents"]
    accepted = next(c for c in parent["conditions"] if c["type"] == "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("False", "UnsupportedValue")
    assert "ReplacePrefixMatch" in accepted["message"]


def test_an_object_the_model_cannot_build_is_rejected_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug of ours (or a shape the schema let through) in one HTTPRoute or one Gateway
    rejects that object, says so in its status and the errors, and builds the rest."""
    from xds_server.model.gateway import build
    from xds_server.model.gateway.listeners import listeners as real_listeners
    from xds_server.model.gateway.rules import compile_route as real_compile

    cls = _object("GatewayClass", "c", "default",
                  {"controllerName": "envoy-lifecycle.io/gateway-controller"})  # fmt: skip
    listener = {"name": "http", "port": 80, "protocol": "HTTP"}
    good, bad = (
        _object("Gateway", name, "ns", {"gatewayClassName": "c", "listeners": [listener]})
        for name in ("good", "bad")
    )
    routes = [
        _object("HTTPRoute", name, "ns", {"parentRefs": [{"name": "good"}],
                                          "hostnames": [f"{name}.example.com"]})
        for name in ("fine", "breaks")
    ]  # fmt: skip

    def compile_route(route: KubeObject, *rest: Any) -> Any:
        if route.name == "breaks":
            raise KeyError("a bug")
        return real_compile(route, *rest)

    def listeners_of(gateway: KubeObject, *rest: Any) -> Any:
        if gateway.name == "bad":
            raise TypeError("another bug")
        return real_listeners(gateway, *rest)

    monkeypatch.setattr(build, "compile_route", compile_route)
    monkeypatch.setattr(build, "listeners_of", listeners_of)
    inputs = GatewayInputs({o.key: o for o in (cls, good, bad, *routes)}, envoy_address="10.0.0.7")
    part = build_gateways(inputs, {}, {})

    (port,) = part.ports.values()
    (chain,) = port.chains.values()
    assert set(chain.hosts) == {"fine.example.com"}, "the good route of the good Gateway serves"
    assert sorted(part.errors) == [
        "test: Gateway ns/bad: cannot be used (TypeError: another bug)",
        "test: HTTPRoute ns/breaks: cannot be used (KeyError: 'a bug')",
    ]
    broken = part.status["HTTPRoute/ns/breaks"]["parents"][0]["conditions"][0]
    assert (broken["type"], broken["status"], broken["reason"]) == (
        "Accepted", "False", "UnsupportedValue"
    )  # fmt: skip
    gateway = {c["type"]: c["status"] for c in part.status["Gateway/ns/bad"]["conditions"]}
    assert gateway == {"Accepted": "False", "Programmed": "False"}


@pytest.mark.parametrize("merge", [False, True], ids=["apart", "merged"])
def test_a_gateway_cannot_take_a_port_another_gateway_serves(merge: bool) -> None:
    """Two tenants' Gateways without addresses share the Envoy address: the newer one's
    listener on the older one's port would have served there (its routes beside the other
    tenant's, its SNI chains joined). Kept apart, it is PortUnavailable and serves nothing;
    --merge-gateways shares the port as asked."""
    cls = _object("GatewayClass", "c", "default",
                  {"controllerName": "envoy-lifecycle.io/gateway-controller"})  # fmt: skip
    listener = {"name": "http", "port": 80, "protocol": "HTTP"}
    older = _object("Gateway", "gw-a", "a", {"gatewayClassName": "c", "listeners": [listener]})
    older.body["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    newer = _object("Gateway", "gw-b", "b", {"gatewayClassName": "c", "listeners": [listener]})
    newer.body["metadata"]["creationTimestamp"] = "2026-06-01T00:00:00Z"
    routes = [
        _object("HTTPRoute", "r", ns, {"parentRefs": [{"name": f"gw-{ns}"}],
                                       "hostnames": [f"{ns}.example.com"]})
        for ns in ("a", "b")
    ]  # fmt: skip
    objects = (cls, older, newer, *routes)
    inputs = GatewayInputs({o.key: o for o in objects}, envoy_address="10.0.0.7", merge=merge)
    part = build_gateways(inputs, {}, {})

    (port,) = part.ports.values()
    hosts = {h for chain in port.chains.values() for h in chain.hosts}
    b_listener = part.status["Gateway/b/gw-b"]["listeners"][0]
    accepted = next(c for c in b_listener["conditions"] if c["type"] == "Accepted")
    if merge:
        assert hosts == {"a.example.com", "b.example.com"}
        assert accepted["status"] == "True"
    else:
        assert hosts == {"a.example.com"}, "gw-b serves nothing on gw-a's port"
        assert (accepted["status"], accepted["reason"]) == ("False", "PortUnavailable")
        assert "Gateway a/gw-a serves this address and port" in accepted["message"]


def test_a_route_that_would_exhaust_envoy_is_refused_alone() -> None:
    """Within the API's limits, 32 parentRefs x 16 hostnames x 128 matches is 65,536 Envoy
    routes in every proxy (Envoy 69 -> 1,285 MiB): over the budget, the route serves nothing
    and says why; a route beside it is served."""
    cls = _object("GatewayClass", "c", "default",
                  {"controllerName": "envoy-lifecycle.io/gateway-controller"})  # fmt: skip
    listeners = [{"name": f"l{n}", "port": 8000 + n, "protocol": "HTTP"} for n in range(32)]
    gateway = _object("Gateway", "g", "ns", {"gatewayClassName": "c", "listeners": listeners})
    matches = [{"path": {"type": "PathPrefix", "value": f"/{n}"}} for n in range(16)]
    huge = _object("HTTPRoute", "huge", "ns", {
        "parentRefs": [{"name": "g", "sectionName": f"l{n}"} for n in range(32)],
        "hostnames": [f"h{n}.example.com" for n in range(16)],
        "rules": [{"matches": matches} for _ in range(8)],
    })  # fmt: skip
    small = _object("HTTPRoute", "small", "ns", {"parentRefs": [{"name": "g"}],
                                                 "hostnames": ["small.example.com"]})  # fmt: skip
    inputs = GatewayInputs(
        {o.key: o for o in (cls, gateway, huge, small)}, envoy_address="10.0.0.7"
    )
    part = build_gateways(inputs, {}, {})

    served = {h for port in part.ports.values() for c in port.chains.values() for h in c.hosts}
    assert served == {"small.example.com"}
    (error,) = part.errors
    assert "would become 65536 Envoy routes" in error
    for parent in part.status["HTTPRoute/ns/huge"]["parents"]:
        accepted = parent["conditions"][0]
        assert (accepted["status"], accepted["reason"]) == ("False", "UnsupportedValue")
    listener = part.status["Gateway/ns/g"]["listeners"][0]
    assert listener["attachedRoutes"] == 1, "the refused route is not counted"


def test_what_envoy_refuses_in_a_gateway_listener_is_traced_to_its_gateway() -> None:
    """Each filter chain knows the Gateways that made it: a violation in chain i blames
    them; one that names no chain blames every Gateway of the port."""
    from xds_server.model.types import Model
    from xds_server.translate.refusals import _origins
    from xds_server.translate.type_urls import LISTENER

    cls = _object("GatewayClass", "c", "default",
                  {"controllerName": "envoy-lifecycle.io/gateway-controller"})  # fmt: skip
    listener = {"name": "http", "port": 80, "protocol": "HTTP"}
    gateway = _object("Gateway", "g", "ns", {"gatewayClassName": "c", "listeners": [listener]})
    inputs = GatewayInputs({o.key: o for o in (cls, gateway)}, envoy_address="10.0.0.7")
    part = build_gateways(inputs, {}, {})
    model = Model(gateway=part)
    (port,) = part.ports.values()
    for violation in ("filter_chains[0].filters[0]: bad", "address: bad"):
        assert _origins(LISTENER, port.name, violation, model) == ["test: Gateway ns/g"]
