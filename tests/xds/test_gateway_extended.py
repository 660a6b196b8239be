"""Gateway API Extended features that ingress-nginx migrations need most, through a real
Envoy: query-parameter and method matches, ResponseHeaderModifier, URLRewrite (hostname,
prefix, full path), redirects of scheme, port and path with 303/307/308, request timeouts,
request mirroring, per-backend request headers, regular-expression matches. Each follows
the conformance suite's test of the same name (`conformance/tests/httproute-*.go`,
v1.6.1), written anew with the harness's checks (bench/lab/gateway_api.py).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from bench.lab.echo import DELAY, SET_HEADER
from bench.lab.gateway_api import (
    INFRA,
    Conformance,
    gateway,
    header,
    listener,
    modifier,
    parent,
    parent_conditions,
    prefix,
    redirect,
    route,
    rule,
    to,
)
from tests.harness.gateway_cluster import gateway_cluster

pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="module")]
GW = "same-namespace"


def query(name: str, value: str, kind: str = "Exact") -> dict[str, Any]:
    return {"type": kind, "name": name, "value": value}


def rewrite(**spec: Any) -> dict[str, Any]:
    return {"type": "URLRewrite", "urlRewrite": spec}


def replace(kind: str, value: str) -> dict[str, Any]:
    key = "replaceFullPath" if kind == "ReplaceFullPath" else "replacePrefixMatch"
    return {"type": kind, key: value}


def on(host: str, *rules: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    return route(name or host.split(".")[0], [parent(GW)], list(rules), hostnames=[host])


def base_objects(cluster: Conformance) -> list[dict[str, Any]]:
    v1, v2, v3 = to("infra-backend-v1"), to("infra-backend-v2"), to("infra-backend-v3")
    return [
        gateway(GW, listener("http", cluster.port)),
        on(
            "query.example.com",
            rule(v1, matches=[{"queryParams": [query("animal", "whale")]}]),
            rule(v2, matches=[{"queryParams": [query("animal", "dolphin")]}]),
            rule(
                v3, matches=[{"queryParams": [query("animal", "dolphin"), query("color", "blue")]}]
            ),
            rule(v3, matches=[{"queryParams": [query("ANIMAL", "Whale")]}]),
        ),
        on(
            "method.example.com",
            rule(v1, matches=[{"method": "POST"}]),
            rule(v2, matches=[{"method": "GET"}]),
            rule(v3, matches=[{"method": "GET", "headers": [header("version", "three")]}]),
        ),
        on(
            "response.example.com",
            rule(
                v1,
                filters=[
                    {
                        "type": "ResponseHeaderModifier",
                        "responseHeaderModifier": {
                            "set": [header("X-Header-Set", "set")],
                            "add": [header("X-Header-Add", "add")],
                            "remove": ["X-Header-Remove"],
                        },
                    }
                ],
            ),
        ),
        on(
            "rewrite.example.com",
            rule(
                v1,
                matches=[prefix("/prefix/one")],
                filters=[rewrite(path=replace("ReplacePrefixMatch", "/one"))],
            ),
            rule(
                v1,
                matches=[prefix("/strip")],
                filters=[rewrite(path=replace("ReplacePrefixMatch", "/"))],
            ),
            rule(
                v1,
                matches=[prefix("/full")],
                filters=[rewrite(path=replace("ReplaceFullPath", "/one"))],
            ),
            rule(v1, matches=[prefix("/host")], filters=[rewrite(hostname="one.example.org")]),
        ),
        on(
            "redirect.example.com",
            rule(matches=[prefix("/scheme")], filters=[redirect(scheme="https")]),
            rule(matches=[prefix("/port")], filters=[redirect(port=8083, statusCode=303)]),
            rule(
                matches=[prefix("/path-full")],
                filters=[redirect(path=replace("ReplaceFullPath", "/one"), statusCode=307)],
            ),
            rule(
                matches=[prefix("/path-prefix")],
                filters=[redirect(path=replace("ReplacePrefixMatch", "/two"), statusCode=308)],
            ),
            rule(
                matches=[prefix("/all")],
                filters=[
                    redirect(
                        scheme="https",
                        hostname="example.org",
                        port=8443,
                        path=replace("ReplaceFullPath", "/x"),
                        statusCode=301,
                    )
                ],
            ),
        ),
        on("timeout.example.com", rule(v1, timeouts={"request": "500ms"})),
        on(
            "backend-timeout.example.com",
            rule(v1, timeouts={"request": "10s", "backendRequest": "500ms"}),
        ),
        on(
            "mirror.example.com",
            rule(v1, filters=[{"type": "RequestMirror", "requestMirror": {"backendRef": v2}}]),
        ),
        on(
            "backendheaders.example.com",
            rule(
                to(
                    "infra-backend-v1",
                    filters=[modifier(set=[header("Backend", "infra-backend-v1")])],
                ),
                to(
                    "infra-backend-v2",
                    filters=[modifier(set=[header("Backend", "infra-backend-v2")])],
                ),
            ),
        ),
        on(
            "regex.example.com",
            rule(v1, matches=[{"path": {"type": "RegularExpression", "value": "/v[0-9]+/items"}}]),
            rule(
                v2,
                matches=[
                    {
                        "headers": [
                            {"type": "RegularExpression", "name": "team", "value": "^(red|blue)$"}
                        ]
                    }
                ],
            ),
        ),
    ]


conformance = gateway_cluster(base_objects)


async def test_httproute_query_param_matching(conformance: Conformance) -> None:
    host = "query.example.com"
    for path, backend in (
        ("/?animal=whale", "infra-backend-v1"),
        ("/?animal=dolphin", "infra-backend-v2"),
        ("/?animal=dolphin&color=blue", "infra-backend-v3"),
        ("/?ANIMAL=Whale", "infra-backend-v3"),
        ("/?animal=dolphin&color=yellow", "infra-backend-v2"),
    ):
        await conformance.expect(GW, host, path, backend=backend)
    for path in ("/?animal=Whale", "/?animal=whaledolphin", "/", "/?color=blue"):
        await conformance.expect(GW, host, path, status=404)


async def test_httproute_method_matching(conformance: Conformance) -> None:
    host = "method.example.com"
    await conformance.expect(GW, host, "/", method="POST", backend="infra-backend-v1")
    await conformance.expect(GW, host, "/", method="GET", backend="infra-backend-v2")
    await conformance.expect(
        GW, host, "/", headers={"version": "three"}, backend="infra-backend-v3"
    )
    await conformance.expect(GW, host, "/", method="DELETE", status=404)


async def test_httproute_response_header_modifier(conformance: Conformance) -> None:
    sent = {SET_HEADER: "X-Header-Set:theirs,X-Header-Add:theirs,X-Header-Remove:gone"}
    got = await conformance.expect(
        GW, "response.example.com", "/", headers=sent, backend="infra-backend-v1"
    )
    assert got.headers["x-header-set"] == "set"
    assert got.headers.get_list("x-header-add") == ["theirs", "add"]
    assert "x-header-remove" not in got.headers


async def test_httproute_rewrite_path_and_host(conformance: Conformance) -> None:
    host = "rewrite.example.com"
    for path, seen in (
        ("/prefix/one/two", "/one/two"),
        ("/prefix/one", "/one"),
        ("/strip/three?x=1", "/three?x=1"),
        ("/strip", "/"),
        ("/full/anything", "/one"),
    ):
        got = await conformance.expect(GW, host, path, backend="infra-backend-v1")
        assert got.json()["path"] == seen, path
    got = await conformance.expect(GW, host, "/host", backend="infra-backend-v1")
    assert got.json()["host"] == "one.example.org"


async def test_httproute_redirects(conformance: Conformance) -> None:
    """Scheme, port and path redirects with 301/302/303/307/308."""
    host = "redirect.example.com"
    for path, status, location in (
        ("/scheme", 302, "https://redirect.example.com/scheme"),
        ("/port", 303, "http://redirect.example.com:8083/port"),
        ("/path-full/x", 307, "http://redirect.example.com/one"),
        ("/path-prefix/three", 308, "http://redirect.example.com/two/three"),
        ("/all", 301, "https://example.org:8443/x"),
    ):
        got = await conformance.expect(GW, host, path, status=status)
        assert got.headers["location"] == location, path


async def test_httproute_request_timeout(conformance: Conformance) -> None:
    """`request`, and `backendRequest` shorter than it: the shorter one answers 504."""
    for host in ("timeout.example.com", "backend-timeout.example.com"):
        await conformance.expect(GW, host, "/", backend="infra-backend-v1")
        await conformance.expect(GW, host, "/", headers={DELAY: "1500"}, status=504)


async def test_httproute_request_mirror(conformance: Conformance) -> None:
    """Answered by v1; v2 sees a copy, its answer dropped."""
    mirror = conformance.echos["infra-backend-v2"]
    await conformance.expect(GW, "mirror.example.com", "/mirrored", backend="infra-backend-v1")
    for _ in range(100):
        if "/mirrored" in mirror.seen:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the mirror saw {mirror.seen[-5:]}")


async def test_httproute_request_header_modifier_backend_weights(
    conformance: Conformance,
) -> None:
    """Each backend's own filter: only requests sent to it carry its header."""
    await conformance.expect(GW, "backendheaders.example.com", "/", status=200)
    seen = set()
    for _ in range(30):
        got = (await conformance.send(GW, "backendheaders.example.com", "/")).json()
        headers = {k.lower(): v for k, v in got["headers"].items()}
        assert headers["backend"] == got["service"]
        seen.add(got["service"])
    assert seen == {"infra-backend-v1", "infra-backend-v2"}


async def test_regular_expression_matches(conformance: Conformance) -> None:
    host = "regex.example.com"
    await conformance.expect(GW, host, "/v12/items", backend="infra-backend-v1")
    await conformance.expect(GW, host, "/v12/items/more", status=404)
    await conformance.expect(GW, host, "/x", headers={"team": "red"}, backend="infra-backend-v2")
    await conformance.expect(GW, host, "/x", headers={"team": "green"}, status=404)


async def test_exact_match_is_not_a_regex(conformance: Conformance) -> None:
    """A query value with regex characters matches only literally."""
    await conformance.expect(GW, "query.example.com", "/?animal=wh.le", status=404)


async def test_a_regex_envoy_refuses_is_left_out_before_it_is_sent(
    conformance: Conformance,
) -> None:
    """Python reads a lookbehind; Envoy's RE2 does not. RE2 itself judges it before anything
    is sent: the route is left out and says why, the other hosts and later changes are
    served, and no proxy ever NACKs it (it used to be found by a NACK, then parked)."""
    bad = route(
        "re2-refuses",
        [parent(GW)],
        [rule(to("infra-backend-v1"), matches=[{"path": {"type": "RegularExpression",
                                                            "value": "/(?<=a)b"}}])],
        hostnames=["nack.example.com"],
    )  # fmt: skip
    good = on("after-nack.example.com", rule(to("infra-backend-v2")), name="after-nack")
    async with conformance.applied("nack", [bad]):
        await conformance.expect(
            GW, "query.example.com", "/?animal=whale", backend="infra-backend-v1"
        )
        conformance.apply("nack", [bad, good])
        await conformance.expect(GW, "after-nack.example.com", "/", backend="infra-backend-v2")
        await conformance.expect(GW, "nack.example.com", "/ab", status=404)
        status = await conformance.eventually(
            f"HTTPRoute/{INFRA}/re2-refuses",
            lambda s: parent_conditions(s)["Accepted"][0] == "False",
        )
        accepted = parent_conditions(status)["Accepted"]
        assert accepted == ("False", "UnsupportedValue")
    assert conformance.server is not None
    nacks = re.search(r'^xds_nacks_total\{type="[^"]*VirtualHost"\} ([0-9.]+)$',
                      await conformance.server.metrics(), re.M)  # fmt: skip
    assert nacks is None or float(nacks[1]) == 0, "nothing Envoy refuses was sent"
