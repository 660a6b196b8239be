"""The shape of every object we read, checked where it enters, as the API server would check it.

Only the fields the model reads are described; unknown fields are ignored (the API server
prunes them). A value of the wrong type, out of range or of the wrong syntax rejects the
object with one message that says where (`spec.rules[0].http.paths[2].backend.service.port`)
and what was expected, so nothing downstream ever sees a shape it does not expect. The rules
follow the Kubernetes API's own validation (DNS names, ports, Ingress paths, EndpointSlice
addresses); what only Envoy refuses is the model's and the translator's business.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any


class Invalid(ValueError):
    """The object does not have the shape the Kubernetes API requires."""


Check = Callable[[Any, str], None]
"""Raises Invalid naming `where` when the value is not acceptable."""

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
WILDCARD_HOST = re.compile(rf"^(?=.{{1,253}}$)\*\.{_LABEL}(\.{_LABEL})*$")
"""`*.` and a DNS name: the API server accepts `*.com` too."""
PORT_NAME = re.compile(r"^(?=.{1,15}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
INVALID_PATH_SEQUENCES = ("//", "/./", "/../", "%2f", "%2F")
INVALID_PATH_SUFFIXES = ("/..", "/.")
"""What the API server refuses in an Exact or Prefix Ingress path."""


def _fail(where: str, expected: str, value: Any) -> Invalid:
    shown = repr(value)
    return Invalid(
        f"{where}: expected {expected}, got {shown[:60]}{'…' if len(shown) > 60 else ''}"
    )


def string(pattern: re.Pattern[str] | None = None, what: str = "a string") -> Check:
    def check(value: Any, where: str) -> None:
        if not isinstance(value, str) or (pattern is not None and not pattern.match(value)):
            raise _fail(where, what, value)

    return check


def choice(*allowed: str) -> Check:
    def check(value: Any, where: str) -> None:
        if value not in allowed:
            raise _fail(where, "one of " + ", ".join(allowed), value)

    return check


def integer(low: int, high: int) -> Check:
    def check(value: Any, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _fail(where, f"a whole number {low}-{high}", value)

    return check


def boolean(value: Any, where: str) -> None:
    if not isinstance(value, bool):
        raise _fail(where, "true or false", value)


def timestamp(value: Any, where: str) -> None:
    """YAML reads an unquoted RFC 3339 time as a datetime; JSON gives a string."""
    if not isinstance(value, str | datetime.datetime):
        raise _fail(where, "an RFC 3339 timestamp", value)


def list_of(item: Check, min_items: int = 0) -> Check:
    def check(value: Any, where: str) -> None:
        if not isinstance(value, list) or len(value) < min_items:
            raise _fail(where, f"a list of at least {min_items}" if min_items else "a list", value)
        for index, entry in enumerate(value):
            item(entry, f"{where}[{index}]")

    return check


def map_of(item: Check) -> Check:
    def check(value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise _fail(where, "a mapping", value)
        for key, entry in value.items():
            if not isinstance(key, str):
                raise _fail(f"{where} key", "a string", key)
            item(entry, f"{where}.{key}")

    return check


def obj(
    fields: Mapping[str, Check], required: tuple[str, ...] = (), then: Check | None = None
) -> Check:
    """A mapping with these fields (absent or null: not given); `then` checks the whole."""

    def check(value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise _fail(where, "a mapping", value)
        for name in required:
            if value.get(name) is None:
                raise Invalid(f"{where + '.' if where else ''}{name}: required")
        for name, field_check in fields.items():
            if value.get(name) is not None:
                field_check(value[name], f"{where}.{name}" if where else name)
        if then is not None:
            then(value, where)

    return check


def _ingress_path(value: Any, where: str) -> None:
    path = value.get("path")
    if path is None or value.get("pathType") == "ImplementationSpecific":
        return
    if not path.startswith("/"):
        raise Invalid(f"{where}.path: must be an absolute path, got {path!r}")
    bad = [s for s in INVALID_PATH_SEQUENCES if s in path]
    bad += [s for s in INVALID_PATH_SUFFIXES if path.endswith(s)]
    if bad:
        raise Invalid(f"{where}.path: must not contain {bad[0]!r}, got {path!r}")


def _host(value: Any, where: str) -> None:
    """A DNS name or a wildcard of one leading label, never an IP address (Kubernetes);
    matched without regard to case, so upper case is accepted here."""
    host = value.lower() if isinstance(value, str) else value
    if not isinstance(host, str) or not (DNS_SUBDOMAIN.match(host) or WILDCARD_HOST.match(host)):
        raise _fail(where, "a DNS name or *.a-dns-name", value)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return
    raise Invalid(f"{where}: must be a DNS name, not an IP address, got {value!r}")


def _rule_host(value: Any, where: str) -> None:
    """A rule's host may be empty: the API omits it, and the rule matches every host."""
    if value != "":
        _host(value, where)


def _one_backend_port(value: Any, where: str) -> None:
    if ("number" in value) == ("name" in value):
        raise Invalid(f"{where}: exactly one of number or name")


def _one_backend(value: Any, where: str) -> None:
    if (value.get("service") is None) == (value.get("resource") is None):
        raise Invalid(f"{where}: exactly one of service or resource")


def _slice_addresses(value: Any, where: str) -> None:
    kind = value["addressType"]
    if kind == "FQDN":
        return  # valid, and ignored like kube-proxy ignores it
    parse = ipaddress.IPv4Address if kind == "IPv4" else ipaddress.IPv6Address
    for index, endpoint in enumerate(value.get("endpoints") or []):
        for number, address in enumerate(endpoint["addresses"]):
            try:
                parse(address)
            except ValueError:
                raise _fail(
                    f"{where + '.' if where else ''}endpoints[{index}].addresses[{number}]",
                    f"an {kind} address",
                    address,
                ) from None


def _metadata(name: Check) -> Check:
    return obj(
        {
            "name": name,
            "namespace": string(DNS_LABEL, "a DNS label"),
            "labels": map_of(string()),
            "annotations": map_of(string()),
            "creationTimestamp": timestamp,
        },
        required=("name",),
    )


SUBDOMAIN_NAME = string(DNS_SUBDOMAIN, "a DNS subdomain name")
PORT_NUMBER = integer(1, 65535)
PROTOCOL = choice("TCP", "UDP", "SCTP")

BACKEND = obj(
    {
        "service": obj(
            {
                "name": string(DNS_LABEL, "a Service name"),
                "port": obj(
                    {"number": PORT_NUMBER, "name": string(PORT_NAME, "a port name")},
                    then=_one_backend_port,
                ),
            },
            required=("name", "port"),
        ),
        "resource": obj({"kind": string(), "name": string()}, required=("kind", "name")),
    },
    then=_one_backend,
)

INGRESS_PATH = obj(
    {
        "path": string(),
        "pathType": choice("Exact", "Prefix", "ImplementationSpecific"),
        "backend": BACKEND,
    },
    required=("pathType", "backend"),
    then=_ingress_path,
)

SPECS: dict[str, Check] = {
    "Ingress": obj(
        {
            "ingressClassName": string(),
            "defaultBackend": BACKEND,
            "rules": list_of(
                obj(
                    {
                        "host": _rule_host,
                        "http": obj({"paths": list_of(INGRESS_PATH, 1)}, required=("paths",)),
                    }
                )
            ),
            "tls": list_of(obj({"hosts": list_of(_host), "secretName": SUBDOMAIN_NAME})),
        }
    ),
    "IngressClass": obj({"controller": string()}),
    "Service": obj(
        {
            "ports": list_of(
                obj(
                    {
                        "port": PORT_NUMBER,
                        "name": string(DNS_LABEL, "a port name"),
                        "protocol": PROTOCOL,
                    },
                    required=("port",),
                )
            )
        }
    ),
}
"""Each kind's `spec`; the EndpointSlice and the Secret keep their fields at the top."""

TOP_LEVEL: dict[str, Check] = {
    "EndpointSlice": obj(
        {
            "ports": list_of(
                obj(
                    {
                        "name": string(),
                        "port": PORT_NUMBER,
                        "protocol": PROTOCOL,
                    }
                )
            ),
            "endpoints": list_of(
                obj(
                    {
                        "addresses": list_of(string(), 1),
                        "conditions": obj(
                            {"ready": boolean, "serving": boolean, "terminating": boolean}
                        ),
                    },
                    required=("addresses",),
                )
            ),
        },
        required=("addressType",),
        then=obj({"addressType": choice("IPv4", "IPv6", "FQDN")}, then=_slice_addresses),
    ),
    "Secret": obj({"type": string(), "data": map_of(string())}),
}

NAMES: dict[str, Check] = {"Service": string(DNS_LABEL, "a DNS label (a Service name)")}
"""Object names: a DNS subdomain, except where the API is stricter."""


def check(kind: str, body: dict[str, Any]) -> None:
    """Raise Invalid when `body`, an object of `kind`, is not what the API server accepts."""
    _metadata(NAMES.get(kind, SUBDOMAIN_NAME))(body.get("metadata"), "metadata")
    spec = SPECS.get(kind)
    if spec is not None and body.get("spec") is not None:
        spec(body["spec"], "spec")
    top = TOP_LEVEL.get(kind)
    if top is not None:
        top(body, "")
