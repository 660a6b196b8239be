"""Gateway API GATEWAY-HTTP conformance, routing: ported case by case from
kubernetes-sigs/gateway-api v1.6.1 (`conformance/tests/*.go` and `*.yaml`,
`conformance/base/manifests.yaml`), written anew here with the harness's checks (see
bench/lab/gateway_api.py), through a real Envoy fed by `xds-server serve --manifests`.

One server and one Envoy serve every test of the module. The tests' routes that can coexist
are applied once (they carry hostnames of their own where the originals have none, and
HTTPRouteSimpleSameNamespace's route, every host, has a Gateway of its own shaped like
`same-namespace`); a test whose objects would change another's answers (a ReferenceGrant,
a route changed mid-test) applies them itself and deletes them when it ends.
The Gateway and listener tests are in test_gateway_listeners.py.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import pytest

from bench.lab.gateway_api import (
    APP,
    CLASS,
    GROUP,
    INFRA,
    WEB,
    Conformance,
    conditions,
    described,
    exact,
    gateway,
    grant,
    header,
    listener,
    listener_status,
    modifier,
    parent,
    parent_conditions,
    prefix,
    redirect,
    route,
    rule,
    to,
)
from bench.lab.xds import endpoint_slice
from tests.harness.gateway_cluster import gateway_cluster

pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="module")]


def base_objects(cluster: Conformance) -> list[dict[str, Any]]:
    port = cluster.port
    return [
        gateway("same-namespace", listener("http", port)),
        gateway("simple-same-namespace", listener("http", port)),
        gateway("backend-namespaces", listener("http", port, "Selector")),
        gateway("parent-ref-same-namespace", listener("http", port)),
        *conformance_routes(port),
        *path_match_order(),
        *listener_hostname_matching(port),
        *service_types(cluster.echos["infra-backend-v1"].port),
        route(
            "all-backends-weight-zero",
            [parent("same-namespace")],
            [rule(to("infra-backend-v1", weight=0), to("infra-backend-v2", weight=0))],
            hostnames=["weightzero.example.com"],
        ),
    ]


def path_match_order() -> list[dict[str, Any]]:
    """HTTPRoutePathMatchOrder: rules in an order that precedence must undo."""
    return [
        route(
            "path-matching-order",
            [parent("same-namespace")],
            [
                rule(to("infra-backend-v1"), matches=[exact("/match")]),
                rule(to("infra-backend-v2"), matches=[exact("/match/exact")]),
                rule(to("infra-backend-v3"), matches=[exact("/match/exact/one")]),
                rule(to("infra-backend-v3"), matches=[prefix("/match/")]),
                rule(to("infra-backend-v1"), matches=[prefix("/match/prefix/")]),
                rule(to("infra-backend-v2"), matches=[prefix("/match/prefix/one")]),
            ],
            hostnames=["pathorder.example.com"],
        )
    ]


def listener_hostname_matching(port: int) -> list[dict[str, Any]]:
    """HTTPRouteListenerHostnameMatching: three listeners on one port told apart by
    hostname, a route on each."""
    name = "httproute-listener-hostname-matching"
    return [
        gateway(
            name,
            listener("listener-1", port, hostname="bar.com"),
            listener("listener-2", port, hostname="foo.bar.com"),
            listener("listener-3", port, hostname="*.bar.com"),
        ),
        *(
            route(
                f"backend-v{n}",
                [parent(name, sectionName=f"listener-{n}")],
                [rule(to(f"infra-backend-v{n}"))],
            )
            for n in (1, 2, 3)
        ),
    ]


def service_types(echo_port: int) -> list[dict[str, Any]]:
    """HTTPRouteServiceTypes: Services without a selector (endpoints written by hand, as the
    slice mirroring would leave them) and headless ones, their slices at the target port
    named like the Service port; all are infra-backend-v1's pod."""
    names = ["manual-endpointslices", "headless", "headless-manual-endpointslices"]
    objects: list[dict[str, Any]] = [
        route(
            "service-types",
            [parent("same-namespace")],
            [rule(to(name), matches=[exact(f"/{name}")]) for name in names],
            hostnames=["servicetypes.example.com"],
        )
    ]
    for name in names:
        spec: dict[str, Any] = {
            "ports": [{"name": "first-port", "protocol": "TCP", "port": 8080, "targetPort": 3000}]
        }
        if name.startswith("headless"):
            spec["clusterIP"] = "None"
        if name == "headless":
            spec["selector"] = {"app": "infra-backend-v1"}
        objects += [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": INFRA},
                "spec": spec,
            },
            endpoint_slice(name, "first-port", echo_port, ["127.0.0.1"], namespace=INFRA),
        ]
    return objects


def conformance_routes(port: int) -> list[dict[str, Any]]:
    """Every ported test's manifests (they coexist, as in one conformance run)."""
    same = [parent("same-namespace")]
    intersection = [parent("httproute-hostname-intersection")]
    return [
        # HTTPRouteSimpleSameNamespace
        route(
            "gateway-conformance-infra-test",
            [parent("simple-same-namespace")],
            [rule(to("infra-backend-v1"))],
        ),
        # HTTPRouteExactPathMatching
        route(
            "exact-path-matching",
            same,
            [
                rule(to("infra-backend-v1"), matches=[exact("/one")]),
                rule(to("infra-backend-v2"), matches=[exact("/two")]),
            ],
            hostnames=["exact.example.com"],
        ),
        # HTTPRouteMatching
        route(
            "matching",
            same,
            [
                rule(
                    to("infra-backend-v1"),
                    matches=[prefix("/"), {"headers": [header("version", "one")]}],
                ),
                rule(
                    to("infra-backend-v2"),
                    matches=[prefix("/v2"), {"headers": [header("version", "two")]}],
                ),
            ],
            hostnames=["matching.example.com"],
        ),
        # HTTPRouteMatchingAcrossRoutes
        route(
            "matching-part1",
            same,
            [
                rule(
                    to("infra-backend-v1"),
                    matches=[prefix("/"), {"headers": [header("version", "one")]}],
                ),
            ],
            hostnames=["example.com", "example.net"],
        ),
        route(
            "matching-part2",
            same,
            [
                rule(
                    to("infra-backend-v2"),
                    matches=[prefix("/v2"), {"headers": [header("version", "two")]}],
                ),
            ],
            hostnames=["*.com"],
        ),
        # HTTPRouteHeaderMatching
        route(
            "header-matching",
            same,
            [
                rule(to("infra-backend-v1"), matches=[{"headers": [header("version", "one")]}]),
                rule(to("infra-backend-v2"), matches=[{"headers": [header("version", "two")]}]),
                rule(
                    to("infra-backend-v1"),
                    matches=[{"headers": [header("version", "two"), header("color", "orange")]}],
                ),
                rule(
                    to("infra-backend-v1"),
                    matches=[
                        {"headers": [header("color", "blue")]},
                        {"headers": [header("color", "green")]},
                    ],
                ),
                rule(
                    to("infra-backend-v2"),
                    matches=[
                        {"headers": [header("color", "red")]},
                        {"headers": [header("color", "yellow")]},
                    ],
                ),
            ],
            hostnames=["headers.example.com"],
        ),
        # HTTPRouteHostnameIntersection
        gateway(
            "httproute-hostname-intersection",
            listener("listener-1", port, hostname="very.specific.com"),
            listener("listener-2", port, hostname="*.wildcard.io"),
            listener("listener-3", port, hostname="*.anotherwildcard.io"),
        ),
        route(
            "specific-host-matches-listener-specific-host",
            intersection,
            [rule(to("infra-backend-v1"), matches=[prefix("/s1")])],
            hostnames=["non.matching.com", "*.nonmatchingwildcard.io", "very.specific.com"],
        ),
        route(
            "specific-host-matches-listener-wildcard-host",
            intersection,
            [rule(to("infra-backend-v2"), matches=[prefix("/s2")])],
            hostnames=[
                "non.matching.com",
                "wildcard.io",
                "foo.wildcard.io",
                "bar.wildcard.io",
                "foo.bar.wildcard.io",
            ],
        ),
        route(
            "wildcard-host-matches-listener-specific-host",
            intersection,
            [rule(to("infra-backend-v3"), matches=[prefix("/s3")])],
            hostnames=["non.matching.com", "*.specific.com"],
        ),
        route(
            "wildcard-host-matches-listener-wildcard-host",
            intersection,
            [rule(to("infra-backend-v1"), matches=[prefix("/s4")])],
            hostnames=["*.anotherwildcard.io"],
        ),
        route(
            "no-intersecting-hosts",
            intersection,
            [rule(to("infra-backend-v2"), matches=[prefix("/s5")])],
            hostnames=["specific.but.wrong.com", "wildcard.io"],
        ),
        # HTTPRouteCrossNamespace
        route("cross-namespace", [parent("backend-namespaces")], [rule(to("web-backend"))], ns=WEB),
        # HTTPRouteInvalidCrossNamespaceBackendRef
        route(
            "invalid-cross-namespace-backend-ref",
            same,
            [rule(to("app-backend-v1", namespace=APP))],
            hostnames=["nogrant.example.com"],
        ),
        # HTTPRouteInvalidNonExistentBackendRef, HTTPRouteInvalidBackendRefUnknownKind
        route(
            "invalid-nonexistent-backend-ref",
            same,
            [rule(to("nonexistent"))],
            hostnames=["missing.example.com"],
        ),
        route(
            "invalid-backend-ref-unknown-kind",
            same,
            [rule(to("infra-backend-v1", kind="UnknownKind", group="unknownkind.example.com"))],
            hostnames=["unknownkind.example.com"],
        ),
        # HTTPRouteInvalidParentRefNotMatchingSectionName
        route(
            "httproute-listener-not-matching-section-name",
            [parent("same-namespace", sectionName="unknown-section")],
            [rule(to("infra-backend-v1"))],
            hostnames=["section.example.com"],
        ),
        # HTTPRouteRequestHeaderModifier
        route(
            "request-header-modifier",
            same,
            [
                rule(
                    to("infra-backend-v1"),
                    matches=[prefix("/set")],
                    filters=[modifier(set=[header("X-Header-Set", "set-overwrites-values")])],
                ),
                rule(
                    to("infra-backend-v1"),
                    matches=[prefix("/add")],
                    filters=[modifier(add=[header("X-Header-Add", "add-appends-values")])],
                ),
                rule(
                    to("infra-backend-v1"),
                    matches=[prefix("/remove")],
                    filters=[modifier(remove=["X-Header-Remove"])],
                ),
            ],
            hostnames=["modifier.example.com"],
        ),
        # HTTPRouteRedirectHostAndStatus
        route(
            "redirect-host-and-status",
            same,
            [
                rule(
                    matches=[prefix("/hostname-redirect")],
                    filters=[redirect(hostname="example.org")],
                ),
                rule(
                    matches=[prefix("/host-and-status")],
                    filters=[redirect(hostname="example.org", statusCode=301)],
                ),
            ],
            hostnames=["redirect.example.com"],
        ),
        # HTTPRouteWeight
        route(
            "weighted-backends",
            same,
            [
                rule(
                    to("infra-backend-v1", weight=70),
                    to("infra-backend-v2", weight=30),
                    to("infra-backend-v3", weight=0),
                )
            ],
            hostnames=["weight.example.com"],
        ),
    ]


conformance = gateway_cluster(base_objects)


async def route_status(cluster: Conformance, name: str, ns: str = INFRA) -> dict[str, Any]:
    return await cluster.eventually(f"HTTPRoute/{ns}/{name}", lambda s: s["parents"])


# -- the tests, each named after the conformance test it ports ----------------------------


async def test_gateway_class_observed_generation(conformance: Conformance) -> None:
    status = await conformance.status(f"GatewayClass/{CLASS}")
    assert conditions(status)["Accepted"] == ("True", "Accepted")
    assert status["conditions"][0]["observedGeneration"] == 2


async def test_httproute_simple_same_namespace(conformance: Conformance) -> None:
    status = await route_status(conformance, "gateway-conformance-infra-test")
    assert parent_conditions(status) == {
        "Accepted": ("True", "Accepted"),
        "ResolvedRefs": ("True", "ResolvedRefs"),
    }
    await conformance.expect(
        "simple-same-namespace", "anything.example", "/", backend="infra-backend-v1"
    )


async def test_httproute_exact_path_matching(conformance: Conformance) -> None:
    host = "exact.example.com"
    await conformance.expect("same-namespace", host, "/one", backend="infra-backend-v1")
    await conformance.expect("same-namespace", host, "/two", backend="infra-backend-v2")
    for path in ("/", "/one/example", "/two/", "/Two"):
        await conformance.expect("same-namespace", host, path, status=404)


async def test_httproute_matching(conformance: Conformance) -> None:
    host = "matching.example.com"
    for path, headers, backend in (
        ("/", {}, "infra-backend-v1"),
        ("/example", {}, "infra-backend-v1"),
        ("/", {"Version": "one"}, "infra-backend-v1"),
        ("/v2", {}, "infra-backend-v2"),
        ("/v2/example", {}, "infra-backend-v2"),
        ("/", {"Version": "two"}, "infra-backend-v2"),
    ):
        await conformance.expect("same-namespace", host, path, backend=backend, headers=headers)


async def test_httproute_matching_across_routes(conformance: Conformance) -> None:
    """Routes of two HTTPRoutes on one host are ranked together (`*.com` covers example.com,
    not example.net)."""
    for host, path, headers, backend in (
        ("example.com", "/", {}, "infra-backend-v1"),
        ("example.com", "/example", {}, "infra-backend-v1"),
        ("example.net", "/example", {}, "infra-backend-v1"),
        ("example.com", "/", {"Version": "one"}, "infra-backend-v1"),
        ("example.com", "/v2", {}, "infra-backend-v2"),
        ("example.com", "/v2/example", {}, "infra-backend-v2"),
        ("example.com", "/", {"Version": "two"}, "infra-backend-v2"),
        ("example.net", "/v2", {}, "infra-backend-v1"),
        ("example.net", "/", {"Version": "two"}, "infra-backend-v1"),
    ):
        await conformance.expect("same-namespace", host, path, backend=backend, headers=headers)


async def test_httproute_header_matching(conformance: Conformance) -> None:
    host = "headers.example.com"
    for headers, backend in (
        ({"Version": "one"}, "infra-backend-v1"),
        ({"Version": "two"}, "infra-backend-v2"),
        ({"Version": "two", "Color": "orange"}, "infra-backend-v1"),
        ({"Color": "blue"}, "infra-backend-v1"),
        ({"Color": "green"}, "infra-backend-v1"),
        ({"Color": "red"}, "infra-backend-v2"),
        ({"Color": "yellow"}, "infra-backend-v2"),
    ):
        await conformance.expect("same-namespace", host, "/", backend=backend, headers=headers)
    for headers in ({"Version": "THREE"}, {"Color": "Orange"}, {}):
        await conformance.expect("same-namespace", host, "/", status=404, headers=headers)


async def test_httproute_hostname_intersection(conformance: Conformance) -> None:
    gw = "httproute-hostname-intersection"
    for name in (
        "specific-host-matches-listener-specific-host",
        "specific-host-matches-listener-wildcard-host",
        "wildcard-host-matches-listener-specific-host",
        "wildcard-host-matches-listener-wildcard-host",
    ):
        status = await route_status(conformance, name)
        assert parent_conditions(status)["Accepted"] == ("True", "Accepted"), name
    for host, path, backend in (
        ("very.specific.com", "/s1", "infra-backend-v1"),
        ("very.specific.com:1234", "/s1", "infra-backend-v1"),
        ("foo.wildcard.io", "/s2", "infra-backend-v2"),
        ("bar.wildcard.io", "/s2", "infra-backend-v2"),
        ("foo.bar.wildcard.io", "/s2", "infra-backend-v2"),
        ("very.specific.com", "/s3", "infra-backend-v3"),
        ("foo.anotherwildcard.io", "/s4", "infra-backend-v1"),
        ("foo.bar.anotherwildcard.io", "/s4", "infra-backend-v1"),
    ):
        answer = await conformance.expect(gw, host, path, backend=backend)
        assert described(answer)["host"] == host, "the backend sees Host as sent, port included"
    for host, path in (
        ("non.matching.com", "/s1"),
        ("foo.nonmatchingwildcard.io", "/s1"),
        ("foo.wildcard.io", "/s1"),
        ("very.specific.com", "/non-matching-prefix"),
        ("wildcard.io", "/s2"),
        ("very.specific.com", "/s2"),
        ("foo.specific.com", "/s3"),
        ("anotherwildcard.io", "/s4"),
        ("specific.but.wrong.com", "/s5"),
        ("wildcard.io", "/s5"),
    ):
        await conformance.expect(gw, host, path, status=404)
    refused = parent_conditions(await route_status(conformance, "no-intersecting-hosts"))
    assert refused["Accepted"] == ("False", "NoMatchingListenerHostname")
    listeners = {
        x["name"]: x for x in (await conformance.status(f"Gateway/{INFRA}/{gw}"))["listeners"]
    }
    assert {n: x["attachedRoutes"] for n, x in listeners.items()} == {
        "listener-1": 2,
        "listener-2": 1,
        "listener-3": 1,
    }
    for item in listeners.values():
        assert item["supportedKinds"] == [{"group": GROUP, "kind": "HTTPRoute"}]
        assert conditions(item)["Accepted"][0] == conditions(item)["ResolvedRefs"][0] == "True"


async def test_httproute_cross_namespace(conformance: Conformance) -> None:
    status = await route_status(conformance, "cross-namespace", WEB)
    assert parent_conditions(status)["Accepted"] == ("True", "Accepted")
    await conformance.expect("backend-namespaces", "x", "/", backend="web-backend", ns=WEB)


async def test_httproute_invalid_cross_namespace_backend_ref(conformance: Conformance) -> None:
    status = parent_conditions(
        await route_status(conformance, "invalid-cross-namespace-backend-ref")
    )
    assert status == {
        "Accepted": ("True", "Accepted"),
        "ResolvedRefs": ("False", "RefNotPermitted"),
    }
    await conformance.expect("same-namespace", "nogrant.example.com", "/", status=500)


async def test_httproute_reference_grant(conformance: Conformance) -> None:
    """A ReferenceGrant for app-backend-v2 (applied by the test: grants are namespace-wide,
    and another test needs app-backend-v2 out of reach)."""
    host = "grant.example.com"
    objects = [
        route(
            "reference-grant",
            [parent("same-namespace")],
            [rule(to("app-backend-v2", namespace=APP))],
            hostnames=[host],
        ),
        grant(
            "reference-grant",
            APP,
            [(GROUP, "HTTPRoute", INFRA)],
            [("", "Service", "app-backend-v2")],
        ),
    ]
    async with conformance.applied("reference-grant", objects):
        await conformance.eventually(
            f"HTTPRoute/{INFRA}/reference-grant",
            lambda s: parent_conditions(s)["ResolvedRefs"] == ("True", "ResolvedRefs"),
        )
        await conformance.expect("same-namespace", host, "/", backend="app-backend-v2", ns=APP)


@pytest.mark.parametrize(
    ("name", "host", "refs"),
    [
        pytest.param(
            "invalid-nonexistent-backend-ref", "missing", ("False", "BackendNotFound"),
            id="HTTPRouteInvalidNonExistentBackendRef",
        ),
        pytest.param(
            "invalid-backend-ref-unknown-kind", "unknownkind", ("False", "InvalidKind"),
            id="HTTPRouteInvalidBackendRefUnknownKind",
        ),
        pytest.param(
            "all-backends-weight-zero", "weightzero", ("True", "ResolvedRefs"),
            id="HTTPRouteAllBackendsWeightZero",
        ),
    ],
)  # fmt: skip
async def test_httproute_answering_500(
    conformance: Conformance, name: str, host: str, refs: tuple[str, str]
) -> None:
    """A rule with no usable backend (missing, of a kind not served, all weighing 0)."""
    status = parent_conditions(await route_status(conformance, name))
    assert status["ResolvedRefs"] == refs
    await conformance.expect("same-namespace", f"{host}.example.com", "/", status=500)


async def test_httproute_invalid_parent_ref_not_matching_section_name(
    conformance: Conformance,
) -> None:
    status = await route_status(conformance, "httproute-listener-not-matching-section-name")
    assert parent_conditions(status)["Accepted"] == ("False", "NoMatchingParent")
    listeners = (await conformance.status(f"Gateway/{INFRA}/same-namespace"))["listeners"]
    assert "section.example.com" not in str(listeners)


async def test_httproute_request_header_modifier(conformance: Conformance) -> None:
    host = "modifier.example.com"
    got = await conformance.expect(
        "same-namespace",
        host,
        "/set",
        backend="infra-backend-v1",
        headers={"X-Header-Set": "some-other-value"},
    )
    assert echoed_headers(got)["x-header-set"] == "set-overwrites-values"
    got = await conformance.expect(
        "same-namespace",
        host,
        "/add",
        backend="infra-backend-v1",
        headers={"X-Header-Add": "some-value"},
    )
    assert echoed_headers(got)["x-header-add"] == "some-value,add-appends-values"
    got = await conformance.expect(
        "same-namespace",
        host,
        "/remove",
        backend="infra-backend-v1",
        headers={"X-Header-Remove": "gone", "X-Keep": "kept"},
    )
    assert "x-header-remove" not in echoed_headers(got)
    assert echoed_headers(got)["x-keep"] == "kept"


def echoed_headers(response: httpx.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in response.json()["headers"].items()}


async def test_httproute_redirect_host_and_status(conformance: Conformance) -> None:
    host = "redirect.example.com"
    got = await conformance.expect("same-namespace", host, "/hostname-redirect", status=302)
    assert got.headers["location"] == "http://example.org/hostname-redirect"
    got = await conformance.expect("same-namespace", host, "/host-and-status", status=301)
    assert got.headers["location"] == "http://example.org/host-and-status"


async def test_httproute_weight(conformance: Conformance) -> None:
    """500 requests: each backend's share within 5 % of its weight; weight 0 gets nothing."""
    host = "weight.example.com"
    await conformance.expect("same-namespace", host, "/", status=200)
    seen: Counter[str] = Counter()
    address = await conformance.address("same-namespace")
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        for _ in range(500):
            response = await client.get(
                f"http://{address}:{conformance.port}/", headers={"Host": host}
            )
            seen[str(response.json()["service"])] += 1
    assert seen["infra-backend-v3"] == 0
    assert abs(seen["infra-backend-v1"] / 500 - 0.7) <= 0.05, seen
    assert abs(seen["infra-backend-v2"] / 500 - 0.3) <= 0.05, seen


async def test_httproute_path_match_order(conformance: Conformance) -> None:
    host = "pathorder.example.com"
    for path, backend in (
        ("/match/exact/one", "infra-backend-v3"),
        ("/match/exact", "infra-backend-v2"),
        ("/match", "infra-backend-v1"),
        ("/match/prefix/one/any", "infra-backend-v2"),
        ("/match/prefix/any", "infra-backend-v1"),
        ("/match/any", "infra-backend-v3"),
    ):
        await conformance.expect("same-namespace", host, path, backend=backend)


async def test_httproute_listener_hostname_matching(conformance: Conformance) -> None:
    """A name goes to the listener whose hostname is the most specific match."""
    gw = "httproute-listener-hostname-matching"
    for n in (1, 2, 3):
        status = await route_status(conformance, f"backend-v{n}")
        assert parent_conditions(status)["Accepted"] == ("True", "Accepted")
    for host, backend in (
        ("bar.com", "infra-backend-v1"),
        ("foo.bar.com", "infra-backend-v2"),
        ("baz.bar.com", "infra-backend-v3"),
        ("boo.bar.com", "infra-backend-v3"),
        ("multiple.prefixes.bar.com", "infra-backend-v3"),
    ):
        await conformance.expect(gw, host, "/", backend=backend)
    for host in ("multiple.prefixes.foo.com", "foo.com", "no.matching.host"):
        await conformance.expect(gw, host, "/", status=404)


async def test_httproute_service_types(conformance: Conformance) -> None:
    status = parent_conditions(await route_status(conformance, "service-types"))
    assert status == {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}
    for name in ("manual-endpointslices", "headless", "headless-manual-endpointslices"):
        await conformance.expect(
            "same-namespace", "servicetypes.example.com", f"/{name}", backend="infra-backend-v1"
        )


async def test_httproute_partially_invalid_via_invalid_reference_grant(
    conformance: Conformance,
) -> None:
    """A ReferenceGrant for app-backend-v1 only: the rule to app-backend-v2 answers 500, its
    sibling to app-backend-v1 is served (HTTPRouteInvalidReferenceGrant checks the same)."""
    host = "partial.example.com"
    objects = [
        grant(
            "invalid-reference-grant",
            APP,
            [(GROUP, "HTTPRoute", INFRA)],
            [("", "Service", "app-backend-v1")],
        ),
        route(
            "invalid-reference-grant",
            [parent("same-namespace")],
            [
                rule(to("app-backend-v2", namespace=APP), matches=[prefix("/v2")]),
                rule(to("app-backend-v1", namespace=APP)),
            ],
            hostnames=[host],
        ),
    ]
    async with conformance.applied("partially-invalid", objects):
        status = await conformance.eventually(
            f"HTTPRoute/{INFRA}/invalid-reference-grant",
            lambda s: parent_conditions(s)["ResolvedRefs"] == ("False", "RefNotPermitted"),
        )
        assert parent_conditions(status)["Accepted"] == ("True", "Accepted")
        await conformance.expect("same-namespace", host, "/v2", status=500)
        await conformance.expect("same-namespace", host, "/", backend="app-backend-v1", ns=APP)
    # The grant gone, app-backend-v1 is out of reach again (HTTPRouteInvalidCrossNamespace
    # BackendRef's route says so).
    await conformance.expect("same-namespace", "nogrant.example.com", "/", status=500)


async def test_httproute_invalid_cross_namespace_parent_ref(conformance: Conformance) -> None:
    gw = "parent-ref-same-namespace"
    objects = [
        route(
            "invalid-cross-namespace-parent-ref",
            [parent(gw)],
            [rule(to("web-backend"))],
            ns=WEB,
        )
    ]
    async with conformance.applied("cross-namespace-parent-ref", objects):
        status = await conformance.eventually(
            f"HTTPRoute/{WEB}/invalid-cross-namespace-parent-ref", lambda s: s["parents"]
        )
        assert parent_conditions(status) == {
            "Accepted": ("False", "NotAllowedByListeners"),
            "ResolvedRefs": ("True", "ResolvedRefs"),
        }
        listeners = listener_status(await conformance.status(f"Gateway/{INFRA}/{gw}"))
        assert listeners["http"]["attachedRoutes"] == 0
        await conformance.expect(gw, "any.example.com", "/", status=404)


async def test_httproute_observed_generation_bump(conformance: Conformance) -> None:
    """The route changed (generation 2): every condition observes it, traffic follows."""
    key, host = f"HTTPRoute/{INFRA}/observed-generation-bump", "bump.example.com"

    def bump(generation: int, backend: str) -> list[dict[str, Any]]:
        return [
            route(
                "observed-generation-bump",
                [parent("same-namespace")],
                [rule(to(backend))],
                hostnames=[host],
                generation=generation,
            )
        ]

    async with conformance.applied("generation-bump", bump(1, "infra-backend-v1")):
        await conformance.eventually(key, lambda s: _observed(s) == {1})
        await conformance.expect("same-namespace", host, "/", backend="infra-backend-v1")
        conformance.apply("generation-bump", bump(2, "infra-backend-v2"))
        status = await conformance.eventually(key, lambda s: _observed(s) == {2})
        assert parent_conditions(status) == {
            "Accepted": ("True", "Accepted"),
            "ResolvedRefs": ("True", "ResolvedRefs"),
        }
        await conformance.expect("same-namespace", host, "/", backend="infra-backend-v2")


def _observed(status: dict[str, Any]) -> set[int]:
    return {c["observedGeneration"] for p in status["parents"] for c in p["conditions"]}


async def test_httproute_invalid_reference_grant(conformance: Conformance) -> None:
    """Six ReferenceGrants, each wrong in one way (its namespace, the from group, kind or
    namespace, the to group, kind or name): none lets the route reach web-backend, so its
    ResolvedRefs is RefNotPermitted and requests get 500."""
    host = "invalidgrant.example.com"
    wrong = {
        "wrong-from-group": ([("not-the-group-youre-looking-for", "HTTPRoute", INFRA)], None),
        "wrong-from-kind": ([(GROUP, "Gateway", INFRA)], None),
        "wrong-from-namespace": ([(GROUP, "HTTPRoute", "not-the-namespace-youre-looking-for")],
                                 None),
        "wrong-to-group": (None, [("not-the-group-youre-looking-for", "Service", "web-backend")]),
        "wrong-to-kind": (None, [("", "Secret", "web-backend")]),
        "wrong-to-name": (None, [("", "Service", "not-the-service-youre-looking-for")]),
    }  # fmt: skip
    grants = [
        grant(f"reference-grant-{name}", WEB, sources or [(GROUP, "HTTPRoute", INFRA)],
              targets or [("", "Service", "web-backend")])
        for name, (sources, targets) in wrong.items()
    ]  # fmt: skip
    grants.append(  # right in every way but its namespace: the route's, not the Service's
        grant("reference-grant-wrong-namespace", INFRA, [(GROUP, "HTTPRoute", INFRA)],
              [("", "Service", "web-backend")])
    )  # fmt: skip
    objects = [
        route("invalid-reference-grant", [parent("same-namespace")],
              [rule(to("web-backend", namespace=WEB))], hostnames=[host]),
        *grants,
    ]  # fmt: skip
    async with conformance.applied("invalid-reference-grant", objects):
        status = await conformance.eventually(
            f"HTTPRoute/{INFRA}/invalid-reference-grant",
            lambda s: parent_conditions(s)["ResolvedRefs"][0] == "False",
        )
        assert parent_conditions(status)["ResolvedRefs"] == ("False", "RefNotPermitted")
        assert parent_conditions(status)["Accepted"] == ("True", "Accepted")
        await conformance.expect("same-namespace", host, "/", status=500)


async def test_httproute_multiple_gateways(conformance: Conformance) -> None:
    """A route on two Gateways is served by each; a route on one only by it. (The routes
    carry a hostname of their own here: hostless ones would answer every other test's host
    on same-namespace.)"""
    host = "multiple.example.com"
    objects = [
        gateway("all-namespaces", listener("http", conformance.port, "All")),
        route("multiple-gateways-shared-route",
              [parent("same-namespace"), parent("all-namespaces")],
              [rule(to("infra-backend-v1"), matches=[prefix("/shared")])], hostnames=[host]),
        route("same-namespace-dedicated-route", [parent("same-namespace")],
              [rule(to("infra-backend-v2"), matches=[prefix("/")])], hostnames=[host]),
        route("all-namespaces-dedicated-route", [parent("all-namespaces")],
              [rule(to("infra-backend-v3"), matches=[prefix("/")])], hostnames=[host]),
    ]  # fmt: skip
    async with conformance.applied("multiple-gateways", objects):
        for name in ("shared", "same-namespace-dedicated", "all-namespaces-dedicated"):
            route_name = "multiple-gateways-shared-route" if name == "shared" else f"{name}-route"
            status = await route_status(conformance, route_name)
            for entry in status["parents"]:
                accepted = {c["type"]: c["status"] for c in entry["conditions"]}["Accepted"]
                assert accepted == "True", (route_name, entry["parentRef"])
        for gw, dedicated in (("same-namespace", "v2"), ("all-namespaces", "v3")):
            await conformance.expect(gw, host, "/shared", backend="infra-backend-v1")
            await conformance.expect(gw, host, "/", backend=f"infra-backend-{dedicated}")


async def test_httproute_no_backend_refs(conformance: Conformance) -> None:
    """Rules whose backendRefs are omitted or empty answer 500 (not the next rule); their
    refs count as resolved."""
    host = "nobackends.example.com"
    objects = [
        route(
            "omitted-backendrefs",
            [parent("same-namespace")],
            [
                {"matches": [exact("/omitted-no-forward")]},
                {"matches": [exact("/empty-no-forward")], "backendRefs": []},
                rule(to("infra-backend-v1"), matches=[prefix("/")]),
            ],
            hostnames=[host],
        )
    ]
    async with conformance.applied("omitted-backendrefs", objects):
        status = await route_status(conformance, "omitted-backendrefs")
        assert parent_conditions(status)["ResolvedRefs"] == ("True", "ResolvedRefs")
        await conformance.expect("same-namespace", host, "/forward", backend="infra-backend-v1")
        for path in ("/omitted-no-forward", "/empty-no-forward"):
            await conformance.expect("same-namespace", host, path, status=500)
