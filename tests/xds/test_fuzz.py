"""Fuzzing the whole pipeline: manifests -> model -> translate -> Envoy's rules -> snapshot.

Hypothesis writes manifests of every kind we route (Ingress, Service, EndpointSlice, the
Gateway API's Gateway and HTTPRoute), read as a directory or as the API server's items,
built from valid values, hostile values (control characters, wildcards in the wrong place,
`?` in paths, huge ports, headers Envoy will not touch, regular expressions RE2 refuses) and
junk of any type at any field. Whatever it writes: no exception escapes, and nothing we would
publish breaks one of Envoy's rules. A sample of the published snapshots is judged by the
real Envoy binary (`envoy --mode validate`), so our reading of its rules cannot drift from
the binary. Deterministic in `make test` (a fixed seed, a bounded number of examples);
FUZZ_EXAMPLES raises the count for a longer run.
"""

from __future__ import annotations

import copy
import datetime
import os
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from envoy.config.route.v3 import route_components_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.lab.envoy_validate import envoy_accepts
from bench.lab.xds import tls_secret
from xds_server.certs import pki
from xds_server.pipeline import Pipeline
from xds_server.sources.objects import Limits, Loaded, TooMuch, parse_documents, parse_item
from xds_server.translate.envoy_rules import violations
from xds_server.translate.listeners import EnvoyPorts
from xds_server.translate.type_urls import VHOST
from xds_server.xds.cache import Snapshot

pytestmark = pytest.mark.timeout(300)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
JUNK_ODDS = 40
HOSTILE_ODDS = 16
_ODDS = st.sampled_from([False] * (JUNK_ODDS - 1) + [True])
_CA = pki.issue_ca("fuzz-ca", datetime.timedelta(days=1), "ecdsa-p256")
_LEAF = pki.issue_leaf(
    _CA, "fuzz", ["a.example"], "server", datetime.timedelta(days=1), "ecdsa-p256"
)

junk = st.one_of(
    st.none(),
    st.integers(-(2**40), 2**40),
    st.text(max_size=6),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def maybe(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the value, one time in JUNK_ODDS anything at all: most documents are then
    whole enough to reach the model and the translator, and every field is tried broken."""
    return _ODDS.flatmap(lambda broken: junk if broken else value)


def mostly(valid: list[Any], hostile: list[Any]) -> st.SearchStrategy[Any]:
    """A valid value mostly, one time in HOSTILE_ODDS a hostile one (or, rarely, junk): a
    document then has a fair chance to be whole, and every value is tried somewhere."""
    pick = st.sampled_from([False] * (HOSTILE_ODDS - 1) + [True])
    return maybe(pick.flatmap(lambda bad: st.sampled_from(hostile if bad else valid)))


hosts = mostly(
    ["a.example", "b.example", "*.example", "A.Example", "*.a.example", "*.com", ""],
    ["x\n.example", "a.*.com", "*", "1.2.3.4", "a..b", "é.example", "-a.example", "a:80"],
)
paths = mostly(
    ["/", "/a", "/a/", "/a/b", "/b", "/a.b", "/ü", "/" + "x" * 300],
    ["/a?b=1", "/a#f", "//x", "/%2f", "/x/..", "/\x00", "no-slash", "", "/a\tb"],
)
path_types = mostly(["Exact", "Prefix", "ImplementationSpecific"], ["Regex", "prefix"])
ports = maybe(
    st.one_of(
        st.fixed_dictionaries({"number": mostly([80], [81, 0, 70000])}),
        st.fixed_dictionaries({"name": mostly(["http"], ["nope", "HTTP"])}),
    )
)
backends = maybe(
    st.fixed_dictionaries(
        {"service": maybe(st.fixed_dictionaries({"name": mostly(["a", "b"], ["x"]),
                                                  "port": ports}))}
    )
)  # fmt: skip
ingress_paths = st.lists(
    maybe(st.fixed_dictionaries({"path": paths, "pathType": path_types, "backend": backends})),
    min_size=1,
    max_size=3,
)
http = maybe(st.fixed_dictionaries({"paths": ingress_paths}))
rules = st.lists(
    maybe(st.fixed_dictionaries({"host": hosts, "http": http})), min_size=1, max_size=3
)
tls = st.lists(
    maybe(
        st.fixed_dictionaries(
            {"hosts": maybe(st.lists(hosts, max_size=2)),
             "secretName": mostly(["good"], ["garbage", "missing"])}
        )
    ),
    max_size=2,
)  # fmt: skip
names = st.sampled_from(["i1", "i2", "i3"])
ingresses = st.builds(
    lambda name, spec: {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    },
    names,
    maybe(st.fixed_dictionaries({"rules": maybe(rules), "tls": maybe(tls)},
                                optional={"defaultBackend": backends})),
)  # fmt: skip
services = st.builds(
    lambda name, service_ports: {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"ports": service_ports},
    },
    st.sampled_from(["a", "b"]),
    maybe(st.lists(maybe(st.fixed_dictionaries({"name": st.sampled_from(["http", "x"]),
                                                 "port": maybe(st.sampled_from([80, 81]))})),
                   max_size=2)),
)  # fmt: skip
slices = st.builds(
    lambda service, address_type, addresses, ready: {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": f"{service}-s", "labels": {"kubernetes.io/service-name": service}},
        "addressType": address_type,
        "ports": [{"name": "http", "port": 9000}],
        "endpoints": [{"addresses": addresses, "conditions": {"ready": ready}}],
    },
    st.sampled_from(["a", "b"]),
    mostly(["IPv4"], ["IPv6", "FQDN"]),
    maybe(st.lists(mostly(["10.0.0.1", "10.0.0.2"], ["::1", "x.example", "999.1.1.1"]),
                   max_size=2)),
    maybe(st.booleans()),
)  # fmt: skip


BASE = [
    {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"ports": [{"name": "http", "port": 80}]},
    }
    for name in ("a", "b")
] + [tls_secret("good", _LEAF.certificate, _LEAF.key), tls_secret("garbage", b"x", b"y")]
"""Always there, so that most Ingresses find their backends (fuzzed ones may shadow them)."""
GATEWAY_GROUP = "gateway.networking.k8s.io"
header_names = mostly(["x-a", "X-Tenant"], ["Host", ":path", "a b", "x\n", ""])
header_values = mostly(["v", "a b"], ["v\n", "\x00", "x\r\ny", "", "v" * 5000])
listeners = st.lists(
    maybe(
        st.fixed_dictionaries(
            {"name": mostly(["http", "web"], ["HTTP", "a b", ""]),
             "port": mostly([18081, 18082], [0, 65536, 18080, "abc"]),
             "protocol": mostly(["HTTP"], ["TCP", "http", "HTTPS"])},
            optional={"hostname": hosts},
        )
    ),
    min_size=1,
    max_size=3,
)  # fmt: skip


def gateway_api(kind: str) -> Any:
    """An object of a Gateway API kind, from its name and spec."""

    def made(name: str, spec: Any) -> dict[str, Any]:
        metadata = {"name": name, "namespace": "default"}
        return {"apiVersion": f"{GATEWAY_GROUP}/v1", "kind": kind, "metadata": metadata,
                "spec": spec}  # fmt: skip

    return made


gateways = st.builds(
    gateway_api("Gateway"),
    st.sampled_from(["gw", "gw2"]),
    maybe(st.fixed_dictionaries({"gatewayClassName": mostly(["fuzz"], ["other", 5]),
                                 "listeners": maybe(listeners)})),
)  # fmt: skip
path_matches = maybe(
    st.fixed_dictionaries(
        {"type": mostly(["PathPrefix", "Exact", "RegularExpression"], ["Regex", 3]),
         "value": mostly(["/", "/a", "/a/b", "^/v[0-9]+$"], ["/a?b", "(?=x)", "no-slash", "["])}
    )
)  # fmt: skip
route_matches = st.lists(
    maybe(
        st.fixed_dictionaries(
            {},
            optional={
                "path": path_matches,
                "headers": maybe(st.lists(maybe(st.fixed_dictionaries(
                    {"name": header_names, "value": header_values})), max_size=2)),
                "method": mostly(["GET", "POST"], ["FETCH", "get"]),
            },
        )
    ),
    max_size=3,
)  # fmt: skip
route_filters = st.lists(
    maybe(
        st.one_of(
            st.builds(
                lambda edits: {"type": "RequestHeaderModifier", "requestHeaderModifier": edits},
                st.fixed_dictionaries({}, optional={
                    "set": st.lists(st.fixed_dictionaries({"name": header_names,
                                                           "value": header_values}), max_size=2),
                    "remove": st.lists(header_names, max_size=2)}),
            ),
            st.builds(
                lambda redirect: {"type": "RequestRedirect", "requestRedirect": redirect},
                st.fixed_dictionaries({}, optional={
                    "hostname": mostly(["b.example"], ["a\r\nb", "*.x"]),
                    "statusCode": mostly([301, 302], [200, "moved"]),
                    "port": mostly([8080], [0, 70000])}),
            ),
        )
    ),
    max_size=2,
)  # fmt: skip
route_backends = st.lists(
    maybe(
        st.fixed_dictionaries(
            {"name": mostly(["a", "b"], ["x"]), "port": mostly([80], [0, 81, "http"])},
            optional={"weight": mostly([1, 0, 50], [-1, 2**32, "heavy"])},
        )
    ),
    max_size=3,
)  # fmt: skip
route_rules = st.lists(
    maybe(st.fixed_dictionaries({}, optional={"matches": route_matches,
                                              "filters": route_filters,
                                              "backendRefs": route_backends})),
    max_size=3,
)  # fmt: skip
http_routes = st.builds(
    gateway_api("HTTPRoute"),
    st.sampled_from(["r1", "r2", "r3"]),
    maybe(st.fixed_dictionaries(
        {"parentRefs": maybe(st.lists(st.fixed_dictionaries(
            {"name": st.sampled_from(["gw", "gw2"])}), min_size=1, max_size=2))},
        optional={"hostnames": maybe(st.lists(hosts, max_size=3)), "rules": maybe(route_rules)},
    )),
)  # fmt: skip
GATEWAY_CLASS = {
    "apiVersion": f"{GATEWAY_GROUP}/v1",
    "kind": "GatewayClass",
    "metadata": {"name": "fuzz"},
    "spec": {"controllerName": "envoy-lifecycle.io/gateway-controller"},
}
manifests = st.lists(
    st.one_of(ingresses, services, slices, gateways, http_routes, http_routes), max_size=8
)
SOURCES = ("manifests", "api")
"""A directory of manifests, or the API server's list items (one object at a time)."""


def publish(documents: list[dict[str, Any]], source: str = "manifests") -> Snapshot | None:
    """The production pipeline, as `xds-server serve` runs it on a directory of manifests
    or on what the API server lists (each item checked alone, as the API source does)."""
    everything = [*documents, *BASE, GATEWAY_CLASS]
    if source == "api":
        loaded = Loaded()
        for item in everything:
            one = parse_item(copy.deepcopy(item), "api:fuzz", Limits())
            loaded.objects += one.objects
            loaded.errors += one.errors
    else:
        try:
            loaded = parse_documents(yaml.safe_dump_all(everything), "fuzz.yaml")
        except TooMuch:
            return None
    built = Pipeline(None, EnvoyPorts("127.0.0.1", 18080, 18443)).build(loaded, 1)
    assert not built.problems, built.problems
    return built.snapshot


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(manifests, st.sampled_from(SOURCES))
def test_no_input_escapes_the_pipeline_and_nothing_published_breaks_envoys_rules(
    documents: list[dict[str, Any]], source: str
) -> None:
    snapshot = publish(documents, source)
    assert snapshot is not None
    for type_url, entries in snapshot.resources.items():
        for name, entry in entries.items():
            assert violations(entry.decoded()) == [], (type_url, name)


@settings(
    max_examples=max(12, EXAMPLES // 12),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(manifests, st.sampled_from(SOURCES))
def test_a_sample_of_what_we_publish_is_accepted_by_the_real_envoy(
    documents: list[dict[str, Any]], source: str
) -> None:
    snapshot = publish(documents, source)
    assert snapshot is not None
    accepted, complaint = envoy_accepts(snapshot)
    assert accepted, complaint


ONE_ROUTE: list[dict[str, Any]] = [
    {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "i"},
     "spec": {"rules": [{"http": {"paths": [{"path": "/ok", "pathType": "Prefix",
              "backend": {"service": {"name": "a", "port": {"number": 80}}}}]}}]}},
]  # fmt: skip
"""One Ingress route to service a (the BASE has it): the catch-all virtual host's first."""


def with_first_route(edit: Callable[[route_components_pb2.Route], None]) -> tuple[Any, Snapshot]:
    """ONE_ROUTE published, its route edited: the edited virtual host and the snapshot."""
    snapshot = publish(ONE_ROUTE)
    assert snapshot is not None
    assert envoy_accepts(snapshot)[0]
    vhost = snapshot.entries(VHOST)["ingress_http/*"].decoded()
    assert isinstance(vhost, route_components_pb2.VirtualHost)
    edit(vhost.routes[0])
    changed = {
        type_url: {n: (vhost if n == "ingress_http/*" else e.decoded()) for n, e in entries.items()}
        for type_url, entries in snapshot.resources.items()
    }
    return vhost, Snapshot.build(changed, 2)


def test_the_real_envoy_refuses_what_our_rules_refuse() -> None:
    """The other direction, on a case our model lets through only if its own check is gone:
    the rules we read from the protos and the binary agree that this prefix is refused."""

    def prefix(route: route_components_pb2.Route) -> None:
        route.match.path_separated_prefix = "/ok?x"

    bad, broken = with_first_route(prefix)
    assert violations(bad) != []
    accepted, complaint = envoy_accepts(broken)
    assert not accepted
    assert "PathSeparatedPrefix" in complaint


@pytest.mark.parametrize("regex", ["^/v[0-9]+$", "(?=x)", "(a)\\1", "x{1000}", "x{90}"])
def test_our_rules_and_the_real_envoy_agree_on_regular_expressions(regex: str) -> None:
    """RE2 reads them as Envoy does: a lookaround, a backreference or a program over Envoy's
    size limit is refused by both, an ordinary one accepted by both."""

    def matching(route: route_components_pb2.Route) -> None:
        route.match.safe_regex.regex = regex

    vhost, changed = with_first_route(matching)
    accepted, complaint = envoy_accepts(changed)
    assert (violations(vhost) == []) == accepted, (violations(vhost), complaint)
