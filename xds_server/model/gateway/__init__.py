"""Gateway API (gateway.networking.k8s.io/v1) -> the model, as the spec and its conformance
suite (v1.6) define it. Along the flow: `types` (what the part is made of), `refs`
(Services, Secrets, ReferenceGrants), `listeners` (classes, Gateways, addresses, listeners),
`rules` (an HTTPRoute's matches, filters and precedence), `attach` (routes to listeners),
`build` (all of it, and the status).
"""

from xds_server.model.gateway.attach import intersect, selects
from xds_server.model.gateway.build import build_gateways
from xds_server.model.gateway.types import (
    DEFAULT_CONTROLLER,
    GatewayInputs,
    GatewayPart,
    GatewaySettings,
)

KINDS = frozenset(
    {"GatewayClass", "Gateway", "HTTPRoute", "ReferenceGrant", "Namespace",
     "CustomResourceDefinition"}
)  # fmt: skip
"""The kinds only the Gateway API part reads (Services, slices and Secrets too)."""

__all__ = [
    "DEFAULT_CONTROLLER",
    "KINDS",
    "GatewayInputs",
    "GatewayPart",
    "GatewaySettings",
    "build_gateways",
    "intersect",
    "selects",
]
