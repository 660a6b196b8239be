"""The shape of every object we read, checked where it enters, as the API server would check it.

Only the fields the model reads are described; unknown fields are ignored (the API server
prunes them). A value of the wrong type, out of range or of the wrong syntax rejects the
object with one message that says where (`spec.rules[0].http.paths[2].backend.service.port`)
and what was expected, so nothing downstream ever sees a shape it does not expect. The rules
follow the Kubernetes API's own validation (DNS names, ports, Ingress paths, EndpointSlice
addresses); what only Envoy refuses is the model's and the translator's business.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from xds_server.sources.gateway_schema import GATEWAY_DEFAULTS, GATEWAY_SPECS
from xds_server.sources.shapes import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    INVALID_PATH_SEQUENCES,
    INVALID_PATH_SUFFIXES,
    PORT_NAME,
    WILDCARD_HOST,
    Check,
    Invalid,
    boolean,
    choice,
    fail,
    integer,
    list_of,
    map_of,
    obj,
    string,
    timestamp,
)

__all__ = ["Invalid", "check", "default", "registered"]


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
    if not isinstance(host, str) or not (
        DNS_SUBDOMAIN.fullmatch(host) or WILDCARD_HOST.fullmatch(host)
    ):
        raise fail(where, "a DNS name or *.a-dns-name", value)
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
                raise fail(
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

SPECS.update(GATEWAY_SPECS)

NAMES: dict[str, Check] = {"Service": string(DNS_LABEL, "a DNS label (a Service name)")}
"""Object names: a DNS subdomain, except where the API is stricter."""

METADATA_ONLY = frozenset({"Namespace", "CustomResourceDefinition"})
"""Kinds of which only metadata is read (a Namespace's labels, a CRD's annotations)."""


def registered(kind: str) -> bool:
    return kind in SPECS or kind in TOP_LEVEL or kind in METADATA_ONLY


def check(kind: str, body: dict[str, Any]) -> None:
    """Raise Invalid when `body`, an object of `kind`, is not what the API server accepts.
    A kind nobody described is refused whole: no kind reaches the model unchecked."""
    if not registered(kind):
        raise Invalid(f"no schema is registered for {kind}: not read")
    _metadata(NAMES.get(kind, SUBDOMAIN_NAME))(body.get("metadata"), "metadata")
    spec = SPECS.get(kind)
    if spec is not None:
        spec(body["spec"] if body.get("spec") is not None else {}, "spec")
    top = TOP_LEVEL.get(kind)
    if top is not None:
        top(body, "")


def default(kind: str, body: dict[str, Any]) -> None:
    """Fill in what the API server defaults when it stores an object of `kind` (checked)."""
    defaulting = GATEWAY_DEFAULTS.get(kind)
    if defaulting is not None:
        defaulting(body)
