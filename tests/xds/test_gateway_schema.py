"""Every Gateway API object is checked as the API server would check it, where it enters:
a wrongly typed or out-of-bounds field rejects that object alone, in one line naming the
file, the object, the field and what was expected. And no kind reaches the model without a
schema: the registry is complete by construction."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from bench.lab.gateway_api import gateway, listener, parent, prefix, route, rule, to
from xds_server.sources import schema
from xds_server.sources.objects import KNOWN_KINDS, parse_documents

Edit = Callable[[dict[str, Any]], None]


def good_route() -> dict[str, Any]:
    return route(
        "web",
        [parent("gw")],
        [rule(to("web"), matches=[prefix("/app")])],
        hostnames=["web.example.com"],
    )


def good_gateway() -> dict[str, Any]:
    return gateway("gw", listener("http", 8080))


def _set(path: str, value: Any) -> Edit:
    """An edit of the object at a dotted path (`spec.rules.0.matches`)."""

    def edit(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        here: Any = body
        for part in parents:
            here = here[int(part)] if part.isdigit() else here.setdefault(part, {})
        if last.isdigit():
            here[int(last)] = value
        else:
            here[last] = value

    return edit


RULE0 = "spec.rules.0"
MATCH0 = f"{RULE0}.matches.0"
BAD_ROUTES: list[tuple[str, Edit, str]] = [
    ("port as text", _set(f"{RULE0}.backendRefs.0.port", "abc"), "backendRefs[0].port"),
    ("weight as text", _set(f"{RULE0}.backendRefs.0.weight", "heavy"), "weight"),
    ("weight past the bound", _set(f"{RULE0}.backendRefs.0.weight", 2**32), "weight"),
    ("headers not a list", _set(f"{MATCH0}.headers", 5), "matches[0].headers"),
    ("path as text", _set(f"{MATCH0}.path", "/x"), "matches[0].path"),
    ("hostnames as text", _set("spec.hostnames", "a.example.com"), "spec.hostnames"),
    ("rules as text", _set("spec.rules", "x"), "spec.rules"),
    ("a ? in a PathPrefix", _set(f"{MATCH0}.path", prefix("/x?y")["path"]), "path.value"),
    ("a path with //", _set(f"{MATCH0}.path", prefix("/a//b")["path"]), "path.value"),
    ("a hostname with LF", _set("spec.hostnames", ["a.example.com\nX: y"]), "hostnames[0]"),
    (
        "a 2,000-byte query name",
        _set(f"{MATCH0}.queryParams", [{"name": "q" * 2000, "value": "v"}]),
        "queryParams[0].name",
    ),
    (
        "a redirect hostname with CRLF",
        _set(
            f"{RULE0}.filters",
            [{"type": "RequestRedirect", "requestRedirect": {"hostname": "a.com\r\nX: y"}}],
        ),
        "requestRedirect.hostname",
    ),
    (
        "a status code as text",
        _set(
            f"{RULE0}.filters",
            [{"type": "RequestRedirect", "requestRedirect": {"statusCode": "moved"}}],
        ),
        "statusCode",
    ),
    (
        "a mirror percent as text",
        _set(
            f"{RULE0}.filters",
            [
                {
                    "type": "RequestMirror",
                    "requestMirror": {"backendRef": to("web"), "percent": "half"},
                }
            ],
        ),
        "percent",
    ),
    (
        "a filter without its field",
        _set(f"{RULE0}.filters", [{"type": "RequestHeaderModifier"}]),
        "needs requestHeaderModifier",
    ),
    ("an unknown method", _set(f"{MATCH0}.method", "FETCH"), "method"),
    (
        "129 matches in all",
        _set(
            "spec.rules",
            [rule(to("web"), matches=[{"path": prefix(f"/{n}")} for n in range(43)])] * 3,
        ),
        "128 matches in all at most",
    ),
    ("33 parentRefs", _set("spec.parentRefs", [parent("gw")] * 33), "32 items at most"),
]
BAD_GATEWAYS: list[tuple[str, Edit, str]] = [
    ("port 65536", _set("spec.listeners.0.port", 65536), "listeners[0].port"),
    ("port as text", _set("spec.listeners.0.port", "abc"), "listeners[0].port"),
    ("no listeners", _set("spec.listeners", []), "spec.listeners"),
    ("a hostname with LF", _set("spec.listeners.0.hostname", "a.com\n"), "hostname"),
    (
        "two listeners of one name",
        _set("spec.listeners", [listener("http", 8080), listener("http", 8081)]),
        "unique",
    ),
    ("a class name as a number", _set("spec.gatewayClassName", 5), "gatewayClassName"),
]


def _loaded(*objects: dict[str, Any]) -> tuple[set[str], list[str]]:
    loaded = parse_documents(yaml.safe_dump_all(objects), "bad.yaml")
    return {f"{o.kind}/{o.name}" for o in loaded.objects}, loaded.errors


def _alone(made: dict[str, Any], edit: Edit) -> tuple[set[str], list[str]]:
    """`made` renamed `bad` and edited, beside the good Gateway and route: what is loaded."""
    bad = copy.deepcopy(made)
    bad["metadata"]["name"] = "bad"
    edit(bad)
    return _loaded(good_gateway(), good_route(), bad)


@pytest.mark.parametrize(("case", "edit", "field"), BAD_ROUTES, ids=[c[0] for c in BAD_ROUTES])
def test_a_route_the_api_would_refuse_is_rejected_alone(case: str, edit: Edit, field: str) -> None:
    names, errors = _alone(good_route(), edit)
    assert names == {"Gateway/gw", "HTTPRoute/web"}, (case, errors)
    (error,) = errors
    assert error.startswith("bad.yaml: HTTPRoute gateway-conformance-infra/bad: "), error
    assert field in error
    assert "\n" not in error


@pytest.mark.parametrize(("case", "edit", "field"), BAD_GATEWAYS, ids=[c[0] for c in BAD_GATEWAYS])
def test_a_gateway_the_api_would_refuse_is_rejected_alone(
    case: str, edit: Edit, field: str
) -> None:
    names, errors = _alone(good_gateway(), edit)
    assert names == {"Gateway/gw", "HTTPRoute/web"}, (case, errors)
    (error,) = errors
    assert field in error
    assert "\n" not in error


def test_the_good_ones_pass() -> None:
    names, errors = _loaded(good_gateway(), good_route())
    assert errors == []
    assert names == {"Gateway/gw", "HTTPRoute/web"}


def test_every_kind_read_has_a_schema_and_one_without_is_refused() -> None:
    """The machinery, not the kind, calls the checks: a kind added to KNOWN_KINDS without a
    schema has every object refused, and this test names it."""
    missing = sorted({kind for _, kind in KNOWN_KINDS if not schema.registered(kind)})
    assert missing == []
    with pytest.raises(schema.Invalid, match="no schema is registered for TLSRoute"):
        schema.check("TLSRoute", {"metadata": {"name": "x"}, "spec": {}})


def test_a_trailing_line_break_is_no_valid_host_for_ingress_either() -> None:
    """`$` matches before a final line break: every pattern must match the whole value."""
    backend = {"service": {"name": "a", "port": {"number": 80}}}
    path = {"path": "/", "pathType": "Prefix", "backend": backend}
    spec = {"rules": [{"host": "a.example.com\n", "http": {"paths": [path]}}]}
    ingress = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "i"}}
    ingress["spec"] = spec
    names, errors = _loaded(ingress)
    assert names == set()
    assert "spec.rules[0].host" in errors[0]


def test_objects_from_files_carry_the_api_servers_defaults() -> None:
    """A route's status echoes its parentRefs as the API server stored them: with group and
    kind, which the conformance harness compares exactly."""
    loaded = parse_documents(yaml.safe_dump(good_route()), "route.yaml")
    (obj,) = loaded.objects
    (ref,) = obj.body["spec"]["parentRefs"]
    assert (ref["group"], ref["kind"]) == ("gateway.networking.k8s.io", "Gateway")
    (backend,) = obj.body["spec"]["rules"][0]["backendRefs"]
    assert (backend["group"], backend["kind"], backend["weight"]) == ("", "Service", 1)
