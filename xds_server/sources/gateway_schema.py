"""The Gateway API kinds as the API server checks them: the CRDs' OpenAPI types, enums,
patterns and bounds, and the CEL rules on what we read (path values, the total of matches).

Written from the v1.6.1 types' validation markers. An object read from a file must fail
here exactly where `kubectl apply` would have failed it, so a manifest never reaches the
model in a shape the API would not hold; what only Envoy refuses (a header value with a line
break, a regular expression RE2 cannot read) is the translator's rules' business.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from xds_server.sources.shapes import (
    DNS_LABEL,
    Check,
    Invalid,
    choice,
    fail,
    integer,
    list_of,
    map_of,
    obj,
    string,
)

_SUB = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
HOSTNAME = string(re.compile(rf"^(\*\.)?{_SUB}$"), "a hostname or *.hostname", 253)
PRECISE_HOSTNAME = string(re.compile(rf"^{_SUB}$"), "a hostname (no wildcard)", 253)
SECTION_NAME = string(re.compile(rf"^{_SUB}$"), "a section name", 253)
OBJECT_NAME = string(re.compile(r"^.+$"), "a name", 253)
NAMESPACE = string(DNS_LABEL, "a namespace name", 63)
GROUP = string(re.compile(rf"^$|^{_SUB}$"), "an API group", 253)
KIND = string(re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"), "a kind", 63)
CONTROLLER = string(
    re.compile(rf"^{_SUB}/[A-Za-z0-9/\-._~%!$&'()*+,;=:]+$"), "a domain-prefixed path", 253
)
PROTOCOL = string(
    re.compile(rf"^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$|^{_SUB}/[A-Za-z0-9]+$"),
    "a protocol name",
    255,
)
HEADER_NAME = string(re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$"), "an HTTP header name", 256)
DURATION = string(re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"), "a duration such as 10s or 1m30s")
PORT = integer(1, 65535)
WEIGHT = integer(0, 1_000_000)
MAX_MATCHES = 128
"""Matches across all rules of one HTTPRoute (a CEL rule of the CRD)."""
_PATH_CHARACTERS = re.compile(r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})+$")
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")


def _absolute_path(value: Any, where: str) -> None:
    """The CRD's rules for an Exact or PathPrefix value (and a redirect's or rewrite's path)."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise fail(where, "an absolute path starting with /", value)
    for bad in ("//", "/./", "/../", "%2f", "%2F", "#"):
        if bad in value:
            raise Invalid(f"{where}: must not contain {bad!r}, got {value[:60]!r}")
    if value.endswith(("/..", "/.")):
        raise Invalid(f"{where}: must not end with /.. or /., got {value[:60]!r}")
    if not _PATH_CHARACTERS.fullmatch(value):
        raise fail(where, "only the characters a URL path may hold", value)


def _path_match(value: Any, where: str) -> None:
    kind = value.get("type", "PathPrefix")
    if kind in ("Exact", "PathPrefix") and value.get("value") is not None:
        _absolute_path(value["value"], f"{where}.value")


PATH_MATCH = obj(
    {
        "type": choice("Exact", "PathPrefix", "RegularExpression"),
        "value": string(max_length=1024),
    },
    then=_path_match,
)
HEADER_MATCH = obj(
    {
        "type": choice("Exact", "RegularExpression"),
        "name": HEADER_NAME,
        "value": string(max_length=4096),
    },
    required=("name", "value"),
)
QUERY_MATCH = obj(
    {
        "type": choice("Exact", "RegularExpression"),
        "name": HEADER_NAME,
        "value": string(max_length=1024),
    },
    required=("name", "value"),
)
MATCH = obj(
    {
        "path": PATH_MATCH,
        "headers": list_of(HEADER_MATCH, max_items=16),
        "queryParams": list_of(QUERY_MATCH, max_items=16),
        "method": choice(*METHODS),
    }
)
HEADER = obj({"name": HEADER_NAME, "value": string(max_length=4096)}, required=("name", "value"))
HEADER_MODIFIER = obj(
    {
        "set": list_of(HEADER, max_items=16),
        "add": list_of(HEADER, max_items=16),
        "remove": list_of(HEADER_NAME, max_items=16),
    }
)


def _path_modifier(value: Any, where: str) -> None:
    field_of = {"ReplaceFullPath": "replaceFullPath", "ReplacePrefixMatch": "replacePrefixMatch"}
    wanted = field_of.get(value.get("type"))
    if wanted is None or value.get(wanted) is None:
        raise Invalid(f"{where}: {value.get('type')} needs {wanted or 'a known type'}")
    _absolute_path(value[wanted], f"{where}.{wanted}")


PATH_MODIFIER = obj(
    {
        "type": choice("ReplaceFullPath", "ReplacePrefixMatch"),
        "replaceFullPath": string(max_length=1024),
        "replacePrefixMatch": string(max_length=1024),
    },
    required=("type",),
    then=_path_modifier,
)
BACKEND_OBJECT = {
    "group": GROUP,
    "kind": KIND,
    "name": OBJECT_NAME,
    "namespace": NAMESPACE,
    "port": PORT,
}
MIRROR = obj(
    {
        "backendRef": obj(BACKEND_OBJECT, required=("name",)),
        "percent": integer(0, 100),
        "fraction": obj(
            {"numerator": integer(0, 2**31 - 1), "denominator": integer(1, 2**31 - 1)},
            required=("numerator",),
        ),
    },
    required=("backendRef",),
)
FILTER_FIELDS: dict[str, Check] = {
    "requestHeaderModifier": HEADER_MODIFIER,
    "responseHeaderModifier": HEADER_MODIFIER,
    "requestMirror": MIRROR,
    "requestRedirect": obj(
        {
            "scheme": choice("http", "https"),
            "hostname": PRECISE_HOSTNAME,
            "path": PATH_MODIFIER,
            "port": PORT,
            "statusCode": integer(301, 308),
        }
    ),
    "urlRewrite": obj({"hostname": PRECISE_HOSTNAME, "path": PATH_MODIFIER}),
    "extensionRef": obj({"group": GROUP, "kind": KIND, "name": OBJECT_NAME}),
}
FILTER_TYPES = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestMirror": "requestMirror",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "ExtensionRef": "extensionRef",
    "CORS": "cors",
    "ExternalAuth": "externalAuth",
}


def _one_filter(value: Any, where: str) -> None:
    """A filter's type names the one field it sets (the CRD's CEL rules)."""
    wanted = FILTER_TYPES[value["type"]]
    if wanted in FILTER_FIELDS and value.get(wanted) is None:
        raise Invalid(f"{where}: a {value['type']} filter needs {wanted}")
    for other in FILTER_FIELDS:
        if other != wanted and value.get(other) is not None:
            raise Invalid(f"{where}: {other} does not belong to a {value['type']} filter")
    redirect = value.get("requestRedirect") or {}
    if redirect.get("statusCode") not in (None, 301, 302, 303, 307, 308):
        code = redirect["statusCode"]
        raise fail(f"{where}.requestRedirect.statusCode", "301, 302, 303, 307 or 308", code)


FILTER = obj({"type": choice(*FILTER_TYPES), **FILTER_FIELDS}, required=("type",), then=_one_filter)
BACKEND_REF = obj(
    {**BACKEND_OBJECT, "weight": WEIGHT, "filters": list_of(FILTER, max_items=16)},
    required=("name",),
)
RULE = obj(
    {
        "name": SECTION_NAME,
        "matches": list_of(MATCH, max_items=64),
        "filters": list_of(FILTER, max_items=16),
        "backendRefs": list_of(BACKEND_REF, max_items=16),
        "timeouts": obj({"request": DURATION, "backendRequest": DURATION}),
        "retry": obj(
            {
                "attempts": integer(1, 2**31 - 1),
                "backoff": DURATION,
                "codes": list_of(integer(400, 599)),
            }
        ),
    }
)
PARENT_REF = obj(
    {
        "group": GROUP,
        "kind": KIND,
        "namespace": NAMESPACE,
        "name": OBJECT_NAME,
        "sectionName": SECTION_NAME,
        "port": PORT,
    },
    required=("name",),
)


def _total_matches(value: Any, where: str) -> None:
    total = sum(len(rule.get("matches") or [None]) for rule in value.get("rules") or [])
    if total > MAX_MATCHES:
        raise Invalid(f"{where}.rules: {MAX_MATCHES} matches in all at most, got {total}")


HTTP_ROUTE = obj(
    {
        "parentRefs": list_of(PARENT_REF, max_items=32),
        "hostnames": list_of(HOSTNAME, max_items=16),
        "rules": list_of(RULE, max_items=16),
    },
    then=_total_matches,
)

ROUTE_KIND = obj({"group": GROUP, "kind": KIND}, required=("kind",))
TLS_CONFIG = obj(
    {
        "mode": choice("Terminate", "Passthrough"),
        "certificateRefs": list_of(
            obj(
                {"group": GROUP, "kind": KIND, "name": OBJECT_NAME, "namespace": NAMESPACE},
                required=("name",),
            ),
            max_items=64,
        ),
        "options": map_of(string(max_length=4096)),
    }
)
LABEL_SELECTOR = obj(
    {
        "matchLabels": map_of(string(max_length=63)),
        "matchExpressions": list_of(
            obj(
                {"key": string(max_length=317), "operator": string(), "values": list_of(string())},
                required=("key", "operator"),
            )
        ),
    }
)
LISTENER = obj(
    {
        "name": SECTION_NAME,
        "hostname": HOSTNAME,
        "port": PORT,
        "protocol": PROTOCOL,
        "tls": TLS_CONFIG,
        "allowedRoutes": obj(
            {
                "namespaces": obj(
                    {"from": choice("All", "Selector", "Same"), "selector": LABEL_SELECTOR}
                ),
                "kinds": list_of(ROUTE_KIND, max_items=8),
            }
        ),
    },
    required=("name", "port", "protocol"),
)


def _unique_listener_names(value: Any, where: str) -> None:
    names = [listener.get("name") for listener in value.get("listeners") or []]
    if len(names) != len(set(names)):
        raise Invalid(f"{where}.listeners: listener names must be unique")


GATEWAY = obj(
    {
        "gatewayClassName": OBJECT_NAME,
        "listeners": list_of(LISTENER, 1, max_items=64),
        "addresses": list_of(
            obj({"type": string(max_length=253), "value": string(max_length=253)}),
            max_items=16,
        ),
        "infrastructure": obj(
            {
                "labels": map_of(string(max_length=63)),
                "annotations": map_of(string(max_length=4096)),
                "parametersRef": obj(
                    {"group": GROUP, "kind": KIND, "name": OBJECT_NAME},
                    required=("group", "kind", "name"),
                ),
            }
        ),
    },
    required=("gatewayClassName", "listeners"),
    then=_unique_listener_names,
)
GATEWAY_CLASS = obj(
    {
        "controllerName": CONTROLLER,
        "parametersRef": obj(
            {"group": GROUP, "kind": KIND, "name": OBJECT_NAME, "namespace": NAMESPACE},
            required=("group", "kind", "name"),
        ),
    },
    required=("controllerName",),
)
REFERENCE_GRANT = obj(
    {
        "from": list_of(
            obj(
                {"group": GROUP, "kind": KIND, "namespace": NAMESPACE},
                required=("group", "kind", "namespace"),
            ),
            1,
            16,
        ),
        "to": list_of(
            obj({"group": GROUP, "kind": KIND, "name": OBJECT_NAME}, required=("group", "kind")),
            1,
            16,
        ),
    },
    required=("from", "to"),
)

GATEWAY_SPECS: dict[str, Check] = {
    "GatewayClass": GATEWAY_CLASS,
    "Gateway": GATEWAY,
    "HTTPRoute": HTTP_ROUTE,
    "ReferenceGrant": REFERENCE_GRANT,
}
"""Each Gateway API kind's `spec`."""


def _default_route(body: dict[str, Any]) -> None:
    """The CRD's defaults the API server writes into every HTTPRoute it stores: a status
    echoes parentRefs as stored, so one read from a file must carry them too."""
    spec = body.get("spec") or {}
    for parent in spec.get("parentRefs") or []:
        parent.setdefault("group", "gateway.networking.k8s.io")
        parent.setdefault("kind", "Gateway")
    for rule in spec.get("rules") or []:
        for ref in rule.get("backendRefs") or []:
            ref.setdefault("group", "")
            ref.setdefault("kind", "Service")
            ref.setdefault("weight", 1)


GATEWAY_DEFAULTS: dict[str, Callable[[dict[str, Any]], None]] = {"HTTPRoute": _default_route}
"""Each kind's defaulting, applied to an object once it passed its checks."""
