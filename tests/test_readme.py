"""The command reference is what `--help` says, the README shows the two commands, and every
document the README links to exists."""

from __future__ import annotations

import re
from pathlib import Path

from envoy_lifecycle.reference import render, splice

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
REFERENCE = ROOT / "docs" / "reference.md"


def test_reference_matches_help() -> None:
    text = REFERENCE.read_text()
    assert splice(text, render()) == text, "docs/reference.md is stale: run `make readme`"


def test_readme_shows_the_two_setup_commands() -> None:
    text = README.read_text()
    assert "make demo" in text
    assert "make test" in text


def test_every_linked_document_exists() -> None:
    links = re.findall(r"\]\(([^)#]+\.md)\)", README.read_text())
    assert links, "the README links to its documents"
    for link in links:
        assert (ROOT / link).is_file(), link


SUITE_V1_6_1_CORE = frozenset(
    {
        "GatewayClassObservedGenerationBump",
        "GatewayInvalidParametersRef",
        "GatewayInvalidRouteKind",
        "GatewayInvalidTLSConfiguration",
        "GatewayListenerUnsupportedProtocol",
        "GatewayModifyListeners",
        "GatewayObservedGenerationBump",
        "GatewaySecretInvalidReferenceGrant",
        "GatewaySecretMissingReferenceGrant",
        "GatewaySecretReferenceGrantAllInNamespace",
        "GatewaySecretReferenceGrantSpecific",
        "GatewayWithAttachedRoutes",
        "HTTPRouteCrossNamespace",
        "HTTPRouteExactPathMatching",
        "HTTPRouteHTTPSListener",
        "HTTPRouteHeaderMatching",
        "HTTPRouteHostnameIntersection",
        "HTTPRouteInvalidBackendRefUnknownKind",
        "HTTPRouteInvalidCrossNamespaceBackendRef",
        "HTTPRouteInvalidCrossNamespaceParentRef",
        "HTTPRouteInvalidNonExistentBackendRef",
        "HTTPRouteInvalidParentRefNotMatchingSectionName",
        "HTTPRouteInvalidReferenceGrant",
        "HTTPRouteListenerHostnameMatching",
        "HTTPRouteMatching",
        "HTTPRouteMatchingAcrossRoutes",
        "HTTPRouteMultipleGateways",
        "HTTPRouteNoBackendRefs",
        "HTTPRouteObservedGenerationBump",
        "HTTPRoutePartiallyInvalidViaInvalidReferenceGrant",
        "HTTPRoutePathMatchOrder",
        "HTTPRouteRedirectHostAndStatus",
        "HTTPRouteReferenceGrant",
        "HTTPRouteRequestHeaderModifier",
        "HTTPRouteServiceTypes",
        "HTTPRouteSimpleSameNamespace",
        "HTTPRouteWeight",
    }
)
"""The suite's tests at v1.6.1 whose features are Gateway, HTTPRoute and ReferenceGrant alone:
every ShortName of conformance/tests/*.go at that tag whose Features list holds nothing else
(read with the search tool's fetch of kubernetes-sigs/gateway-api)."""
PORTED_AS = {
    "GatewaySecretInvalidReferenceGrant": "test_gateway_secret_reference_grant_refused",
    "GatewaySecretMissingReferenceGrant": "test_gateway_secret_reference_grant_refused",
    "GatewaySecretReferenceGrantAllInNamespace": "test_gateway_secret_reference_grant",
    "GatewaySecretReferenceGrantSpecific": "test_gateway_secret_reference_grant",
}
"""Tests ported as cases of one parametrized test."""
CONFORMANCE = [
    ROOT / "tests" / "xds" / f"test_gateway_{m}.py" for m in ("conformance", "listeners")
]


def _snake(name: str) -> str:
    for word, plain in (("HTTPRoute", "Httproute"), ("HTTPS", "Https"), ("TLS", "Tls")):
        name = name.replace(word, plain)
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_the_readme_conformance_table_is_the_v1_6_1_core_list_and_each_has_its_test() -> None:
    table = README.read_text().split("| test | result | test | result |")[1].split("\n\n")[0]
    names = set(re.findall(r"\| ([A-Za-z]+) \| pass", table))
    assert names == SUITE_V1_6_1_CORE, names ^ SUITE_V1_6_1_CORE
    sources = "".join(path.read_text() for path in CONFORMANCE)
    for name in sorted(names):
        function = PORTED_AS.get(name, f"test_{_snake(name)}")
        assert f"def {function}(" in sources or f'id="{name}"' in sources, name
