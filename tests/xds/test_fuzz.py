"""Fuzzing the whole pipeline: manifests -> model -> translate -> Envoy's rules -> snapshot.

Hypothesis writes manifests of every kind we read, built from valid values, hostile values
(control characters, wildcards in the wrong place, `?` in paths, huge ports) and junk of any
type at any field. Whatever it writes: no exception escapes, and nothing we would publish
breaks one of Envoy's rules. A sample of the published snapshots is judged by the real Envoy
binary (`envoy --mode validate`), so our reading of its rules cannot drift from the binary.
Deterministic in `make test` (a fixed seed, a bounded number of examples); FUZZ_EXAMPLES
raises the count for a longer run.
"""

from __future__ import annotations

import datetime
import os
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
from xds_server.sources.objects import TooMuch, parse_documents
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
manifests = st.lists(st.one_of(ingresses, services, slices), max_size=8)


def publish(documents: list[dict[str, Any]]) -> Snapshot | None:
    """The production pipeline, as `xds-server serve` runs it on a directory."""
    try:
        loaded = parse_documents(yaml.safe_dump_all(documents + BASE), "fuzz.yaml")
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
@given(manifests)
def test_no_input_escapes_the_pipeline_and_nothing_published_breaks_envoys_rules(
    documents: list[dict[str, Any]],
) -> None:
    snapshot = publish(documents)
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
@given(manifests)
def test_a_sample_of_what_we_publish_is_accepted_by_the_real_envoy(
    documents: list[dict[str, Any]],
) -> None:
    snapshot = publish(documents)
    assert snapshot is not None
    accepted, complaint = envoy_accepts(snapshot)
    assert accepted, complaint


def test_the_real_envoy_refuses_what_our_rules_refuse() -> None:
    """The other direction, on a case our model lets through only if its own check is gone:
    the rules we read from the protos and the binary agree that this prefix is refused."""
    documents: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"},
         "spec": {"ports": [{"name": "http", "port": 80}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "i"},
         "spec": {"rules": [{"http": {"paths": [{"path": "/ok", "pathType": "Prefix",
                  "backend": {"service": {"name": "a", "port": {"number": 80}}}}]}}]}},
    ]  # fmt: skip
    snapshot = publish(documents)
    assert snapshot is not None
    assert envoy_accepts(snapshot)[0]
    bad = snapshot.entries(VHOST)["ingress_http/*"].decoded()
    assert isinstance(bad, route_components_pb2.VirtualHost)
    bad.routes[0].match.path_separated_prefix = "/ok?x"
    assert violations(bad) != []
    broken = Snapshot.build(
        {
            type_url: {
                name: (bad if name == "ingress_http/*" else entry.decoded())
                for name, entry in entries.items()
            }
            for type_url, entries in snapshot.resources.items()
        },
        2,
    )
    accepted, complaint = envoy_accepts(broken)
    assert not accepted
    assert "PathSeparatedPrefix" in complaint
