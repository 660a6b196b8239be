"""Model-based: for random sets of Ingresses and random requests, a plain reference of the
Kubernetes rules (as docs/xds.md settles what Kubernetes leaves open) and a matcher that
follows Envoy's documented matching over the configuration we translate pick the same
backend, or both 404. The Envoy matcher is itself checked against the real Envoy on a sample,
so it cannot drift from the binary."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.route.v3 import route_components_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.lab.xds import endpoint_slice, ingress, service
from tests.xds.test_ingress_conformance import Cluster, backend, host_rule, path
from xds_server.model.state import build
from xds_server.sources.objects import parse_documents
from xds_server.translate.listeners import EnvoyPorts
from xds_server.translate.resources import resources
from xds_server.translate.type_urls import VHOST
from xds_server.xds.cache import Snapshot

SERVICES = ("a", "b", "c", "d")
HOSTS = ("a.example", "b.example", "*.example", "*.a.example", None)
PATHS = ("/", "/x", "/x/", "/x/y", "/xy")
REQUEST_HOSTS = (
    "a.example", "A.Example:8080", "b.example", "z.example", "q.a.example", "Q.A.example:80",
    "p.q.a.example", "example", "other.org",
)  # fmt: skip
KINDS = ("Exact", "Prefix")
REQUEST_PATHS = ("/", "/x", "/x/", "/x/y", "/xy", "/x/y/z", "/zz", "/X")


@dataclass(frozen=True)
class Rule:
    host: str | None
    paths: tuple[tuple[str, str, str], ...]  # (path, type, service)


@dataclass(frozen=True)
class Ing:
    name: str
    rules: tuple[Rule, ...]
    default: str | None


# -- the reference: Kubernetes' words, plainly ------------------------------------------------


def kube_pick(ingresses: list[Ing], host: str, request: str) -> str | None:
    """Ingresses oldest first. The host picks the rules (exact, else a one-label wildcard,
    else the rules without host); among them the longest matching path wins, Exact before
    Prefix at equal length, the oldest first; no path: the defaultBackend of the oldest
    Ingress that has rules for that host, or for no host any Ingress' oldest; else 404."""
    name = host.split(":")[0].lower()
    exact = {r.host for i in ingresses for r in i.rules if r.host and not r.host.startswith("*")}
    wild = {r.host for i in ingresses for r in i.rules if r.host and r.host.startswith("*")}
    owner = name if name in exact else next((w for w in wild if _one_label(name, w)), None)
    matches = [
        (_length(p, kind), kind == "Exact", -age, -position, svc)
        for age, i in enumerate(ingresses)
        for position, (h, p, kind, svc) in enumerate(
            (r.host, p, kind, svc) for r in i.rules for p, kind, svc in r.paths
        )
        if h == owner and _path_matches(p, kind, request)
    ]
    if matches:
        return max(matches)[4]
    owners = [i for i in ingresses if owner is None or any(r.host == owner for r in i.rules)]
    return next((i.default for i in owners if i.default), None)


def _one_label(host: str, wildcard: str) -> bool:
    suffix = wildcard[1:]
    return host.endswith(suffix) and "." not in host[: -len(suffix)] and host != suffix[1:]


def _length(rule_path: str, kind: str) -> int:
    return len(rule_path) if kind == "Exact" else len(rule_path.rstrip("/") or "/")


def _path_matches(rule_path: str, kind: str, request: str) -> bool:
    if kind == "Exact":
        return request == rule_path
    wanted = [e for e in rule_path.split("/") if e]
    return [e for e in request.split("/") if e][: len(wanted)] == wanted


# -- Envoy's documented matching over what we translate ---------------------------------------


def envoy_pick(
    vhosts: list[route_components_pb2.VirtualHost], host: str, request: str
) -> str | None:
    """ignore_port_in_host_matching; domain: exact (any case), else the longest `*.suffix`
    (any depth), else `*`; then the first route whose match (path, prefix, separated prefix,
    :authority regex on the Host as sent, port included; the :method of a route split for
    its retries) holds; a direct response or no
    route is 404."""
    name = host.split(":")[0].lower()
    chosen = _select(vhosts, name)
    if chosen is None:
        return None
    for route in chosen.routes:
        if _route_matches(route.match, host, request):
            return route.route.cluster.split("/")[1] if route.HasField("route") else None
    return None


def _select(
    vhosts: list[route_components_pb2.VirtualHost], name: str
) -> route_components_pb2.VirtualHost | None:
    by_domain = {d.lower(): v for v in vhosts for d in v.domains}
    if name in by_domain:
        return by_domain[name]
    suffixes = [d for d in by_domain if d.startswith("*.") and name.endswith(d[1:])]
    if suffixes:
        return by_domain[max(suffixes, key=len)]
    return by_domain.get("*")


def _route_matches(match: route_components_pb2.RouteMatch, host: str, request: str) -> bool:
    for header in match.headers:
        assert header.name in (":authority", ":method")
        sent = host if header.name == ":authority" else "GET"  # the requests here are GETs
        if re.fullmatch(header.string_match.safe_regex.regex, sent) is None:
            return False
    kind = match.WhichOneof("path_specifier")
    value: str = getattr(match, str(kind))
    if kind == "prefix":
        return request.startswith(value)
    if kind == "path":
        return request == value
    assert kind == "path_separated_prefix"
    return request == value or request.startswith(value + "/")


# -- the property --------------------------------------------------------------------------------


rules = st.builds(
    Rule,
    st.sampled_from(HOSTS),
    st.lists(
        st.tuples(
            st.sampled_from(PATHS), st.sampled_from(["Exact", "Prefix"]), st.sampled_from(SERVICES)
        ),
        min_size=1,
        max_size=3,
    ).map(tuple),
)
ingress_sets = st.lists(
    st.tuples(st.lists(rules, max_size=3).map(tuple), st.none() | st.sampled_from(SERVICES)),
    min_size=1,
    max_size=4,
).map(lambda items: [Ing(f"i{n}", r, d) for n, (r, d) in enumerate(items) if r or d])


def manifest_objects(ingresses: list[Ing]) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for svc in SERVICES:
        objects += [service(svc, [("http", 8080)]), endpoint_slice(svc, "http", 9000, ["10.0.0.1"])]
    for age, ing in enumerate(ingresses):
        body = ingress(
            ing.name,
            [host_rule(r.host, *(path(p, k, s) for p, k, s in r.paths)) for r in ing.rules],
        )
        if ing.default:
            body["spec"]["defaultBackend"] = backend(ing.default)
        body["metadata"]["creationTimestamp"] = f"2026-01-{age + 1:02d}T00:00:00Z"
        if not ing.rules:
            body["spec"].pop("rules")
        objects.append(body)
    return objects


def translated_vhosts(ingresses: list[Ing]) -> list[route_components_pb2.VirtualHost]:
    loaded = parse_documents(yaml.safe_dump_all(manifest_objects(ingresses)), "p.yaml")
    model = build(loaded.objects, None)
    snapshot = Snapshot.build(resources(model, EnvoyPorts()), 1)
    found = []
    for name, entry in snapshot.entries(VHOST).items():
        message = entry.decoded()
        assert isinstance(message, route_components_pb2.VirtualHost)
        if name.startswith("ingress_http/"):
            found.append(message)
    return found


@settings(max_examples=300, deadline=None, derandomize=True)
@given(ingress_sets)
def test_envoy_picks_what_kubernetes_says(ingresses: list[Ing]) -> None:
    vhosts = translated_vhosts(ingresses)
    for host in REQUEST_HOSTS:
        for request in REQUEST_PATHS:
            expected = kube_pick(ingresses, host, request)
            assert envoy_pick(vhosts, host, request) == expected, (host, request)


SAMPLE = [
    Ing("i0", (Rule("a.example", (("/x", "Prefix", "a"), ("/x/y", "Exact", "b"))),), "c"),
    Ing(
        "i1",
        (Rule("*.example", (("/", "Prefix", "b"),)), Rule(None, (("/xy", "Exact", "d"),))),
        None,
    ),
    Ing("i2", (Rule("*.a.example", (("/x/", "Prefix", "c"),)),), "d"),
    Ing(
        "i3",
        (Rule("a.example", (("/x", "Prefix", "d"),)), Rule(None, (("/", "Prefix", "a"),))),
        None,
    ),
]


@pytest.mark.parametrize("sotw", [False], ids=["delta"])
async def test_the_envoy_matcher_agrees_with_the_real_envoy(
    sotw: bool, workdir: Path, manifests: Path
) -> None:
    cluster = Cluster(workdir, manifests, sotw)
    try:
        await cluster.services(*SERVICES)
        bodies = [o for o in manifest_objects(SAMPLE) if o["kind"] == "Ingress"]
        await cluster.start(*bodies)
        await cluster.settled("a.example", "/x", "a")
        vhosts = translated_vhosts(SAMPLE)
        for host in REQUEST_HOSTS:
            for request in REQUEST_PATHS:
                status, echoed, _ = await cluster.send("GET", host, request)
                served = echoed["service"] if echoed else None
                assert status in (200, 404)
                assert served == envoy_pick(vhosts, host, request), (host, request)
                assert served == kube_pick(SAMPLE, host, request), (host, request)
    finally:
        await cluster.stop()
