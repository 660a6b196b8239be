"""Kubernetes objects in, model and Envoy resources out: tables and properties."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.route.v3 import route_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.lab.xds import endpoint_slice, ingress, ingress_class, rule, service
from xds_server.model.state import build
from xds_server.model.types import EXACT, PREFIX
from xds_server.pipeline import Pipeline
from xds_server.sources.objects import KubeObject, Loaded, parse_documents
from xds_server.translate.listeners import EnvoyPorts
from xds_server.translate.resources import resources
from xds_server.translate.routes import referenced_clusters
from xds_server.translate.type_urls import CLUSTER, ENDPOINT, LISTENER, ROUTE, ROUTE_VHDS, VHOST
from xds_server.xds.cache import Snapshot


def objects(*bodies: dict[str, Any]) -> list[KubeObject]:
    import yaml

    return parse_documents(yaml.safe_dump_all(list(bodies)), "test.yaml").objects


BASE = (
    service("a", [("http", 80)]),
    endpoint_slice("a", "http", 9000, ["10.0.0.1", "10.0.0.2"]),
    service("b", [("http", 80), ("admin", 81)]),
    endpoint_slice("b", "http", 9001, ["10.0.1.1"]),
)


def test_precedence_longest_path_first_and_exact_before_prefix() -> None:
    model = build(
        objects(
            *BASE,
            ingress(
                "i",
                [
                    rule(
                        "foo.example.com",
                        ("/", "Prefix", "a", 80),
                        ("/api", "Prefix", "a", 80),
                        ("/api", "Exact", "b", "http"),
                        ("/api/v2", "ImplementationSpecific", "b", 80),
                    )
                ],
            ),
        ),
        None,
    )
    routes = [(r.path, r.kind) for r in model.hosts["foo.example.com"].routes]
    assert routes == [("/api/v2", PREFIX), ("/api", EXACT), ("/api", PREFIX), ("/", PREFIX)]


def test_hosts_exact_then_wildcard_then_catch_all() -> None:
    model = build(
        objects(
            *BASE,
            ingress(
                "i",
                [
                    rule("*.example.com", ("/", "Prefix", "a", 80)),
                    rule(None, ("/", "Prefix", "a", 80)),
                    rule("foo.example.com", ("/", "Prefix", "b", 80)),
                ],
            ),
        ),
        None,
    )
    assert [h.name for h in model.sorted_hosts()] == ["foo.example.com", "*.example.com", "*"]


def test_ready_endpoints_only_at_the_named_slice_port() -> None:
    model = build(
        objects(
            service("c", [("web", 80)]),
            endpoint_slice("c", "web", 7000, ["10.0.2.1"]),
            endpoint_slice("c", "web", 7000, ["10.0.2.2"], ready=False, suffix="b"),
            ingress("i", [rule(None, ("/", "Prefix", "c", "web"))]),
        ),
        None,
    )
    (backend,) = model.clusters.values()
    assert [(e.address, e.port) for e in backend.endpoints] == [("10.0.2.1", 7000)]


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (
            ingress("x", [rule(None, ("/", "Prefix", "missing", 80))]),
            "Service default/missing not found",
        ),
        (ingress("x", [rule(None, ("/", "Prefix", "a", 99))]), "has no port 99"),
        (ingress("x", [rule(None, ("nope", "Prefix", "a", 80))]), "must be an absolute path"),
        (ingress("x", [rule(None, ("/", "Regex", "a", 80))]), "expected one of Exact"),
        (ingress("x", [rule("a.*.com", ("/", "Prefix", "a", 80))]), "a DNS name or *."),
        (ingress("x", []), "no rules and no defaultBackend"),
    ],
)
def test_an_invalid_ingress_is_rejected_in_one_line_and_the_rest_is_kept(
    bad: dict[str, Any], says: str
) -> None:
    good = ingress("good", [rule("ok.example.com", ("/", "Prefix", "a", 80))])
    loaded = parse_documents(yaml.safe_dump_all([*BASE, good, bad]), "test.yaml")
    model = build(loaded.objects, None)
    assert "ok.example.com" in model.hosts
    (error,) = loaded.errors + model.errors
    assert error.startswith("test.yaml: Ingress default/x: ")
    assert says in error
    assert "\n" not in error


def test_ingress_class_by_name_annotation_and_default() -> None:
    ours = ingress_class("envoy", default=True)
    named = ingress(
        "named", [rule("n.example.com", ("/", "Prefix", "a", 80))], ingressClassName="envoy"
    )
    other = ingress(
        "other", [rule("o.example.com", ("/", "Prefix", "a", 80))], ingressClassName="nginx"
    )
    classless = ingress("classless", [rule("c.example.com", ("/", "Prefix", "a", 80))])
    model = build(objects(*BASE, ours, named, other, classless), "envoy")
    assert set(model.hosts) == {"n.example.com", "c.example.com"}


def test_default_backend_is_the_catch_all() -> None:
    body = ingress("d", [], defaultBackend={"service": {"name": "b", "port": {"number": 80}}})
    model = build(objects(*BASE, body), None)
    (catch_all,) = model.sorted_hosts()
    assert catch_all.name == "*"
    assert catch_all.routes == []
    assert catch_all.default is not None
    assert catch_all.default.upstream.cluster == "default/b/http"


def test_resources_reference_only_what_they_define() -> None:
    model = build(objects(*BASE, ingress("i", [rule(None, ("/", "Prefix", "a", 80))])), None)
    out = resources(model, EnvoyPorts("127.0.0.1", 8080, 8443))
    assert set(out[LISTENER]) == {"ingress_http"}
    assert referenced_clusters(out[VHOST]) == set(out[CLUSTER]) == set(out[ENDPOINT])
    assert set(out[VHOST]) == {"ingress_http/*", "ingress_https/*"}


def test_full_route_configurations_are_assembled_exactly_from_the_virtual_hosts() -> None:
    """SotW proxies get whole route configurations, built from the virtual hosts' bytes:
    they must be byte for byte what protobuf itself would serialize."""
    bodies = [
        ingress(
            f"i{n}", [rule(f"h{n}.example.com", ("/", "Prefix", "a", 80), ("/x", "Exact", "b", 80))]
        )
        for n in range(40)
    ]
    model = build(
        objects(*BASE, *bodies, ingress("d", [rule(None, ("/", "Prefix", "b", 80))])), None
    )
    out = resources(model, EnvoyPorts())
    snapshot = Snapshot.build(out, 1)
    for name in ("ingress_http", "ingress_https"):
        keys = sorted(k for k in out[VHOST] if k.startswith(name + "/"))  # exact hosts, then *
        vhosts = [out[VHOST][k] for k in sorted(keys, key=lambda k: k.endswith("/*"))]
        expected = route_pb2.RouteConfiguration(
            name=name, virtual_hosts=vhosts, ignore_port_in_host_matching=True
        )
        entry = snapshot.entries(ROUTE)[name]
        assert entry.resource.value == expected.SerializeToString(deterministic=True)
        assert entry.decoded() == expected
        assert entry.clusters == {"default/a/http", "default/b/http"}
        vhds = snapshot.entries(ROUTE_VHDS)[name].decoded()
        assert isinstance(vhds, route_pb2.RouteConfiguration)
        assert vhds.HasField("vhds")
        assert not vhds.virtual_hosts


def test_an_unchanged_virtual_host_is_the_same_entry_in_the_next_snapshot() -> None:
    """The pipeline keeps its stages' state: a change to one Ingress re-serializes only
    its hosts."""
    pipeline = Pipeline(None, EnvoyPorts())
    loaded = objects(
        *BASE,
        *(
            ingress(f"i{n}", [rule(f"h{n}.example.com", ("/", "Prefix", "a", 80))])
            for n in range(5)
        ),
    )
    first = pipeline.build(Loaded(loaded), 1).snapshot
    assert first is not None
    changed = objects(ingress("i3", [rule("h3.example.com", ("/", "Prefix", "b", 80))]))
    loaded = [o for o in loaded if o.name != "i3"] + changed
    second = pipeline.build(Loaded(loaded), 2).snapshot
    assert second is not None
    same = [n for n, e in second.entries(VHOST).items() if first.entries(VHOST).get(n) is e]
    assert sorted(same) == sorted(
        f"{config}/h{n}.example.com"
        for config in ("ingress_http", "ingress_https")
        for n in (0, 1, 2, 4)
    )


def test_versions_are_content_hashes_stable_across_builds() -> None:
    model = build(objects(*BASE, ingress("i", [rule(None, ("/", "Prefix", "a", 80))])), None)
    first = Snapshot.build(resources(model, EnvoyPorts()), 1)
    second = Snapshot.build(
        resources(
            build(objects(*BASE, ingress("i", [rule(None, ("/", "Prefix", "a", 80))])), None),
            EnvoyPorts(),
        ),
        7,
    )
    for type_url in (LISTENER, ROUTE, ROUTE_VHDS, VHOST, CLUSTER, ENDPOINT):
        assert first.version(type_url) == second.version(type_url)


paths = st.from_regex(r"/[a-z]{1,4}(/[a-z]{1,4}){0,2}", fullmatch=True)
hosts = st.one_of(st.none(), st.from_regex(r"(\*\.)?[a-z]{1,5}\.example\.com", fullmatch=True))
path_rules = st.tuples(
    paths,
    st.sampled_from(["Exact", "Prefix", "ImplementationSpecific"]),
    st.sampled_from(["a", "b"]),
    st.sampled_from([80, "http"]),
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(hosts, st.lists(path_rules, min_size=1, max_size=5)), min_size=1, max_size=6)
)
def test_translation_never_duplicates_names_and_every_cluster_exists(
    rules: list[tuple[str | None, list[tuple[str, str, str, int | str]]]],
) -> None:
    bodies = [ingress(f"i{n}", [rule(host, *paths)]) for n, (host, paths) in enumerate(rules)]
    model = build(objects(*BASE, *bodies), None)
    assert all("which is older; this one is not used" in e for e in model.errors), model.errors
    out = resources(model, EnvoyPorts())
    snapshot = Snapshot.build(out, 1)  # raises on a dangling reference
    for entry in snapshot.entries(ROUTE).values():
        route_config = entry.decoded()
        assert isinstance(route_config, route_pb2.RouteConfiguration)
        names = [vhost.name for vhost in route_config.virtual_hosts]
        assert len(names) == len(set(names))
        domains = [d for v in route_config.virtual_hosts for d in v.domains]
        assert len(domains) == len(set(domains))
    assert referenced_clusters(out[VHOST]) <= set(snapshot.entries(CLUSTER))


def test_a_configmap_volume_is_read_once_and_its_data_swap_is_seen(tmp_path: Path) -> None:
    """Visible names link through `..data` to a timestamped directory, as the kubelet lays
    out a ConfigMap volume; an update swaps `..data` with one rename."""
    import os

    from xds_server.sources.directory import DirectorySource

    def version(name: str, backend: str) -> None:
        directory = tmp_path / f"..{name}"
        directory.mkdir()
        body = ingress("i", [rule(None, ("/", "Prefix", backend, 80))])
        (directory / "app.yaml").write_text(yaml.safe_dump_all([*BASE, body]))
        os.symlink(directory.name, tmp_path / "..data_tmp")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")

    version("2026_11_26_1", "a")
    os.symlink("..data/app.yaml", tmp_path / "app.yaml")
    source = DirectorySource(tmp_path)
    first = source.load()
    assert len(first.objects) == 5, "each object once, not again from ..<timestamp>/"
    version("2026_11_26_2", "b")
    second = build(source.load().objects, None)
    (host,) = second.hosts.values()
    assert host.routes[0].upstream.service == "b"


def test_yaml_is_read_the_kubernetes_way_ready_no_means_not_ready() -> None:
    """Kubernetes reads YAML 1.1-style: `no` is false. A YAML 1.2 parser would read the string
    'no', and a not-ready endpoint would get traffic."""
    text = """
apiVersion: v1
kind: Service
metadata: {name: s}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-a, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.0.0.1], conditions: {ready: no}}
- {addresses: [10.0.0.2], conditions: {ready: yes}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: i}
spec: {defaultBackend: {service: {name: s, port: {number: 80}}}}
"""
    built = build(parse_documents(text, "k.yaml").objects, None)
    (backend,) = built.clusters.values()
    assert [e.address for e in backend.endpoints] == ["10.0.0.2"]
