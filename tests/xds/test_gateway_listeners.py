"""Gateway API GATEWAY-HTTP conformance, Gateways and listeners: attached routes, route
kinds, HTTPS listeners and their certificates (ReferenceGrants for Secrets), listeners
added and removed, observedGeneration. Ported case by case from kubernetes-sigs/gateway-api
v1.6.1 (`conformance/tests/gateway-*.go`, `httproute-https-listener.go` and their YAML),
written anew with the harness's checks (bench/lab/gateway_api.py), through a real Envoy.

Certificates for Secrets in other namespaces are named per test (the suite's all share one
name, `certificate`, and run one at a time; grants here coexist).
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx
import pytest

from bench.lab.gateway_api import (
    APP,
    CLASS,
    CONTROLLER,
    GROUP,
    INFRA,
    WEB,
    Conformance,
    certificate_ref,
    conditions,
    gateway,
    grant,
    https_listener,
    listener,
    listener_status,
    parent,
    parent_conditions,
    route,
    rule,
    to,
)
from bench.lab.xds import tls_secret
from tests.harness.gateway_cluster import gateway_cluster

pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="module")]

HTTP_ROUTE = [{"group": GROUP, "kind": "HTTPRoute"}]
SUITE_CERT = "tls-validity-checks-certificate"


def base_objects(cluster: Conformance) -> list[dict[str, Any]]:
    return [
        *attached_routes(cluster.port),
        *unresolved_attached_route(cluster.tls_port),
        *unsupported_protocols(cluster.port),
        *invalid_route_kinds(cluster.port),
        *invalid_tls(cluster),
        *https_listeners(cluster.tls_port),
        *secret_grants(cluster),
    ]


def attached_routes(port: int) -> list[dict[str, Any]]:
    """GatewayWithAttachedRoutes: one route on one Gateway, two on another."""
    selector = {"matchLabels": {"kubernetes.io/metadata.name": INFRA}}
    found = []
    for name, routes in (
        ("gateway-with-one-attached-route", ["http-route-1"]),
        ("gateway-with-two-attached-routes", ["http-route-2", "http-route-3"]),
    ):
        only = listener(
            "http", port, allowedRoutes={"kinds": [{"kind": "HTTPRoute"}],
                                         "namespaces": {"from": "Selector", "selector": selector}}
        )  # fmt: skip
        found.append(gateway(name, only))
        found += [route(r, [parent(name)], [rule(to("infra-backend-v1"))]) for r in routes]
    return found


def unresolved_attached_route(tls_port: int) -> list[dict[str, Any]]:
    """GatewayWithAttachedRoutes, its third Gateway: an HTTPS listener whose certificate
    does not exist, and a route to a backend that does not either."""
    name = "unresolved-gateway-with-one-attached-unresolved-route"
    tls = https_listener("tls", tls_port, certificate_ref("missing-certificate"))
    return [
        gateway(name, tls),
        route("http-route-4", [parent(name, sectionName="tls")], [rule(to("does-not-exist"))]),
    ]


def unsupported_protocols(port: int) -> list[dict[str, Any]]:
    """GatewayListenerUnsupportedProtocol: a Gateway with no protocol served, one with one."""
    invalid = {**listener("invalid", port + 1), "protocol": "example.com/unsupported"}
    return [
        gateway("gateway-only-unsupported-protocols", invalid),
        gateway("gateway-supported-and-unsupported-protocols", listener("http", port), invalid),
    ]


def invalid_route_kinds(port: int) -> list[dict[str, Any]]:
    """GatewayInvalidRouteKind: a listener for a kind that does not exist only, and one for it
    and HTTPRoute (whose routes still attach)."""
    kinds = {
        "only-invalid": ["InvalidRoute"],
        "supported-and-invalid": ["InvalidRoute", "HTTPRoute"],
    }
    found = []
    for name, wanted in kinds.items():
        allowed = {"namespaces": {"from": "All"}, "kinds": [{"kind": k} for k in wanted]}
        found.append(
            gateway(f"gateway-{name}-route-kind", listener("http", port, allowedRoutes=allowed))
        )
    found.append(
        route(
            "gateway-supported-and-invalid-route-kind-control",
            [parent("gateway-supported-and-invalid-route-kind", sectionName="http")],
            [rule(to("infra-backend-v1"))],
            hostnames=["supported-route-kind.example.com"],
        )
    )
    return found


INVALID_TLS = {
    "nonexistent-secret": certificate_ref("nonexistent-certificate"),
    "unsupported-group": certificate_ref(SUITE_CERT, group="wrong.group.company.io"),
    "unsupported-kind": certificate_ref(SUITE_CERT, kind="WrongKind"),
    "malformed-secret": certificate_ref("malformed-certificate"),
}


def invalid_tls(cluster: Conformance) -> list[dict[str, Any]]:
    """GatewayInvalidTLSConfiguration: HTTPS listeners whose certificate cannot be had, beside
    an HTTP listener that serves its control route."""
    found: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": "malformed-certificate", "namespace": INFRA},
            # Not PEM (base64 of "Hello world"), and the key is the certificate.
            "data": {"tls.crt": "SGVsbG8gd29ybGQK", "tls.key": "SGVsbG8gd29ybGQK"},
        }
    ]
    for name, ref in INVALID_TLS.items():
        gw = f"gateway-certificate-{name}"
        found.append(
            gateway(
                gw,
                listener("http", cluster.port),
                https_listener("https", cluster.tls_port, ref),
            )
        )
        found.append(
            route(
                f"{gw}-control",
                [parent(gw, sectionName="http")],
                [rule(to("infra-backend-v1"))],
                hostnames=[f"{name}.example.com"],
            )
        )
    return found


def https_listeners(tls_port: int) -> list[dict[str, Any]]:
    """HTTPRouteHTTPSListener: the base's Gateway with an HTTPS listener for any name and one
    for second-example.org, and two routes."""
    gw = "same-namespace-with-https-listener"
    cert = certificate_ref(SUITE_CERT)
    return [
        gateway(
            gw,
            https_listener("https", tls_port, cert, origin="Same"),
            https_listener(
                "https-with-hostname", tls_port, cert, origin="Same", hostname="second-example.org"
            ),
        ),
        route(
            "httproute-https-test",
            [parent(gw)],
            [rule(to("infra-backend-v1"))],
            hostnames=["example.org"],
        ),
        route(
            "httproute-https-test-no-hostname",
            [parent(gw, sectionName="https-with-hostname")],
            [rule(to("infra-backend-v1"))],
        ),
    ]


def secret_grants(cluster: Conformance) -> list[dict[str, Any]]:
    """The GatewaySecret* tests: Gateways whose certificate is another namespace's Secret,
    with a specific grant, a grant for every Secret of the namespace, none, and grants
    that each miss by one field."""
    pair = cluster.certificate

    def secret(name: str, ns: str) -> dict[str, Any]:
        return tls_secret(name, pair.certificate, pair.key, namespace=ns)

    def https_gateway(name: str, secret_name: str, ns: str) -> dict[str, Any]:
        ref = certificate_ref(secret_name, ns)
        return gateway(name, https_listener("https", cluster.tls_port, ref))

    gw_from = [(GROUP, "Gateway", INFRA)]
    wrong = "ungranted-certificate"
    return [
        secret("certificate", WEB),
        secret("certificate", APP),
        secret(wrong, WEB),
        secret("missing-grant-certificate", WEB),
        https_gateway("gateway-secret-reference-grant-specific", "certificate", WEB),
        grant("reference-grant-specific", WEB, gw_from, [("", "Secret", "certificate")]),
        https_gateway("gateway-secret-reference-grant-all-in-namespace", "certificate", APP),
        grant("reference-grant-all-in-namespace", APP, gw_from, [("", "Secret", "")]),
        https_gateway("gateway-secret-missing-reference-grant", "missing-grant-certificate", WEB),
        https_gateway("gateway-secret-invalid-reference-grant", wrong, WEB),
        grant("reference-grant-wrong-namespace", APP, gw_from, [("", "Secret", wrong)]),
        grant("reference-grant-wrong-from-group", WEB,
              [("not-the-group-youre-looking-for", "Gateway", INFRA)], [("", "Secret", wrong)]),
        grant("reference-grant-wrong-from-kind", WEB, [(GROUP, "HTTPRoute", INFRA)],
              [("", "Secret", wrong)]),
        grant("reference-grant-wrong-from-namespace", WEB,
              [(GROUP, "Gateway", "not-the-namespace-youre-looking-for")], [("", "Secret", wrong)]),
        grant("reference-grant-wrong-to-group", WEB, gw_from,
              [("not-the-group-youre-looking-for", "Secret", wrong)]),
        grant("reference-grant-wrong-to-kind", WEB, gw_from, [("", "Service", wrong)]),
        grant("reference-grant-wrong-to-name", WEB, gw_from,
              [("", "Secret", "not-the-certificate-youre-looking-for")]),
    ]  # fmt: skip


conformance = gateway_cluster(base_objects)


async def listeners_of(cluster: Conformance, name: str) -> dict[str, dict[str, Any]]:
    status = await cluster.eventually(f"Gateway/{INFRA}/{name}", lambda s: s["listeners"])
    return listener_status(status)


# -- the tests, each named after the conformance test it ports ----------------------------


async def test_gateway_with_attached_routes(conformance: Conformance) -> None:
    for name, count in (
        ("gateway-with-one-attached-route", 1),
        ("gateway-with-two-attached-routes", 2),
    ):
        http = (await listeners_of(conformance, name))["http"]
        assert http["attachedRoutes"] == count
        assert http["supportedKinds"] == HTTP_ROUTE
        assert conditions(http)["Accepted"][0] == conditions(http)["ResolvedRefs"][0] == "True"
    await conformance.expect(
        "gateway-with-two-attached-routes", "any.example.com", "/", backend="infra-backend-v1"
    )
    # A listener that cannot be programmed still counts the route attached to it.
    name = "unresolved-gateway-with-one-attached-unresolved-route"
    tls = (await listeners_of(conformance, name))["tls"]
    assert tls["attachedRoutes"] == 1
    assert conditions(tls)["Programmed"][0] == conditions(tls)["ResolvedRefs"][0] == "False"
    status = await conformance.status(f"HTTPRoute/{INFRA}/http-route-4")
    assert parent_conditions(status)["ResolvedRefs"][0] == "False"
    assert parent_conditions(status)["Accepted"] == ("True", "Accepted")


async def test_gateway_listener_unsupported_protocol(conformance: Conformance) -> None:
    """The Gateway is Accepted while one listener is (ListenersNotValid names the others)."""
    for name, accepted in (
        ("gateway-only-unsupported-protocols", "False"),
        ("gateway-supported-and-unsupported-protocols", "True"),
    ):
        status = await conformance.eventually(f"Gateway/{INFRA}/{name}", lambda s: s["listeners"])
        assert conditions(status)["Accepted"] == (accepted, "ListenersNotValid")
        invalid = listener_status(status)["invalid"]
        assert invalid["supportedKinds"] == []
        assert conditions(invalid)["Accepted"] == ("False", "UnsupportedProtocol")
        assert invalid["attachedRoutes"] == 0
    http = listener_status(status)["http"]
    assert conditions(http)["Accepted"] == ("True", "Accepted")


async def test_gateway_invalid_route_kind(conformance: Conformance) -> None:
    only = (await listeners_of(conformance, "gateway-only-invalid-route-kind"))["http"]
    assert only["supportedKinds"] == []
    assert conditions(only)["ResolvedRefs"] == ("False", "InvalidRouteKinds")
    assert only["attachedRoutes"] == 0
    both = (await listeners_of(conformance, "gateway-supported-and-invalid-route-kind"))["http"]
    assert both["supportedKinds"] == HTTP_ROUTE
    assert conditions(both)["ResolvedRefs"] == ("False", "InvalidRouteKinds")
    # The kind it does support still attaches and serves.
    assert both["attachedRoutes"] == 1
    await conformance.expect(
        "gateway-supported-and-invalid-route-kind",
        "supported-route-kind.example.com",
        "/",
        backend="infra-backend-v1",
    )


@pytest.mark.parametrize("case", sorted(INVALID_TLS))
async def test_gateway_invalid_tls_configuration(conformance: Conformance, case: str) -> None:
    name = f"gateway-certificate-{case}"
    found = await listeners_of(conformance, name)
    https = found["https"]
    assert https["supportedKinds"] == HTTP_ROUTE
    assert conditions(https)["ResolvedRefs"] == ("False", "InvalidCertificateRef")
    assert conditions(https)["Programmed"][0] == "False"
    assert https["attachedRoutes"] == 0
    # The Gateway's HTTP listener is served all the same.
    assert found["http"]["attachedRoutes"] == 1
    await conformance.expect(name, f"{case}.example.com", "/", backend="infra-backend-v1")


async def test_httproute_https_listener(conformance: Conformance) -> None:
    """SNI picks the listener, then Host picks the route within it: a name no listener has
    lands on the one without a hostname, whose route only serves example.org."""
    gw = "same-namespace-with-https-listener"
    for name in ("httproute-https-test", "httproute-https-test-no-hostname"):
        status = await conformance.eventually(f"HTTPRoute/{INFRA}/{name}", lambda s: s["parents"])
        assert parent_conditions(status) == {
            "Accepted": ("True", "Accepted"),
            "ResolvedRefs": ("True", "ResolvedRefs"),
        }
    got = await conformance.expect(
        gw, "example.org", "/", sni="example.org", backend="infra-backend-v1"
    )
    assert got.json()["proto"] == "HTTP/1.1"
    await conformance.expect(gw, "second-example.org", "/", sni="unknown-example.org", status=404)
    await conformance.expect(
        gw, "second-example.org", "/", sni="second-example.org", backend="infra-backend-v1"
    )
    await conformance.expect(gw, "unknown-example.org", "/", sni="unknown-example.org", status=404)
    # Without TLS, nothing answers there.
    address = await conformance.address(gw)
    async with httpx.AsyncClient(trust_env=False, timeout=2) as client:
        with pytest.raises(httpx.HTTPError):
            await client.get(f"http://{address}:{conformance.tls_port}/")


async def test_https_listener_serves_the_certificate(conformance: Conformance) -> None:
    """The certificate Envoy presents is the Secret's, verified against the suite's CA."""
    address = await conformance.address("same-namespace-with-https-listener")
    context = ssl.create_default_context(cadata=conformance.ca.certificate.decode())
    async with httpx.AsyncClient(trust_env=False, timeout=5, verify=context) as client:
        response = await client.get(
            f"https://{address}:{conformance.tls_port}/",
            headers={"Host": "example.org"},
            extensions={"sni_hostname": "example.org"},
        )
    assert response.status_code == 200


@pytest.mark.parametrize("scope", ["specific", "all-in-namespace"])
async def test_gateway_secret_reference_grant(conformance: Conformance, scope: str) -> None:
    """GatewaySecretReferenceGrantSpecific and GatewaySecretReferenceGrantAllInNamespace."""
    name = f"gateway-secret-reference-grant-{scope}"
    https = (await listeners_of(conformance, name))["https"]
    assert {k: v[0] for k, v in conditions(https).items()} == {
        "Accepted": "True",
        "ResolvedRefs": "True",
        "Programmed": "True",
        "Conflicted": "False",
    }
    status = await conformance.status(f"Gateway/{INFRA}/{name}")
    assert conditions(status)["Programmed"] == ("True", "Programmed")


@pytest.mark.parametrize("case", ["missing", "invalid"])
async def test_gateway_secret_reference_grant_refused(conformance: Conformance, case: str) -> None:
    """GatewaySecretMissingReferenceGrant and GatewaySecretInvalidReferenceGrant (seven grants,
    each wrong in one field)."""
    https = (await listeners_of(conformance, f"gateway-secret-{case}-reference-grant"))["https"]
    assert https["supportedKinds"] == HTTP_ROUTE
    assert conditions(https)["ResolvedRefs"] == ("False", "RefNotPermitted")
    assert conditions(https)["Programmed"][0] == "False"


async def test_gateway_modify_listeners(conformance: Conformance) -> None:
    """A listener added serves its routes; a listener removed stops serving them."""
    port, tls_port = conformance.port, conformance.tls_port
    secure = https_listener(
        "https", tls_port, certificate_ref(SUITE_CERT, INFRA), hostname="secure.test.com"
    )
    added = listener("http", port, "All", hostname="data.test.com")

    def objects(name: str, generation: int, *listeners: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            gateway(name, *listeners, generation=generation),
            route(f"{name}-route", [parent(name)], [rule(to("infra-backend-v1"))]),
        ]

    async with conformance.applied("add-listener", objects("gateway-add-listener", 1, secure)):
        key = f"Gateway/{INFRA}/gateway-add-listener"
        await conformance.eventually(key, lambda s: _attached(s) == {"https": 1})
        conformance.apply("add-listener", objects("gateway-add-listener", 2, secure, added))
        status = await conformance.eventually(
            key, lambda s: _attached(s) == {"https": 1, "http": 1}
        )
        assert _observed(status) == {2}
        await conformance.expect(
            "gateway-add-listener", "data.test.com", "/", backend="infra-backend-v1"
        )
        await conformance.expect(
            "gateway-add-listener", "secure.test.com", "/", sni="secure.test.com",
            backend="infra-backend-v1",
        )  # fmt: skip
    name, kept = "gateway-remove-listener", listener("http", port, "All")
    async with conformance.applied("remove-listener", objects(name, 1, secure, kept)):
        key = f"Gateway/{INFRA}/{name}"
        await conformance.eventually(key, lambda s: _attached(s) == {"https": 1, "http": 1})
        await conformance.expect(name, "secure.test.com", "/", sni="secure.test.com", status=200)
        conformance.apply("remove-listener", objects(name, 2, kept))
        status = await conformance.eventually(key, lambda s: _attached(s) == {"http": 1})
        assert _observed(status) == {2}
        await conformance.expect(name, "any.example.com", "/", backend="infra-backend-v1")
        await _refused_tls(conformance, name)


async def _refused_tls(cluster: Conformance, name: str) -> None:
    """No TLS listener left at the Gateway's address: connections are refused."""
    for _ in range(300):
        try:
            await cluster.send(name, "secure.test.com", "/", sni="secure.test.com")
        except httpx.HTTPError:
            return
    raise AssertionError("the removed HTTPS listener still answers")


async def test_gateway_observed_generation_bump(conformance: Conformance) -> None:
    name = "gateway-observed-generation-bump"
    key = f"Gateway/{INFRA}/{name}"
    first = listener("http", conformance.port)
    alternate = listener("alternate", conformance.port, "All", hostname="foo.com")
    async with conformance.applied("generation-bump", [gateway(name, first)]):
        await conformance.eventually(key, lambda s: _observed(s) == {1})
        conformance.apply("generation-bump", [gateway(name, first, alternate, generation=2)])
        status = await conformance.eventually(key, lambda s: _observed(s) == {2})
        assert set(listener_status(status)) == {"http", "alternate"}
        assert conditions(status)["Programmed"] == ("True", "Programmed")


def _attached(status: dict[str, Any]) -> dict[str, int]:
    return {x["name"]: x["attachedRoutes"] for x in status["listeners"]}


def _observed(status: dict[str, Any]) -> set[int]:
    """Every observedGeneration of the Gateway's conditions and its listeners'."""
    found = {c["observedGeneration"] for c in status["conditions"]}
    return found | {c["observedGeneration"] for x in status["listeners"] for c in x["conditions"]}


async def test_gateway_class_observed_generation_bump(conformance: Conformance) -> None:
    """A GatewayClass of ours changed (generation 2): its Accepted condition observes it."""

    def gateway_class(generation: int) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/v1",
            "kind": "GatewayClass",
            "metadata": {"name": "gatewayclass-observed-generation-bump", "generation": generation},
            "spec": {"controllerName": CONTROLLER, "description": f"version {generation}"},
        }

    key = "GatewayClass/gatewayclass-observed-generation-bump"
    async with conformance.applied("class-bump", [gateway_class(1)]):
        await conformance.eventually(key, lambda s: s["conditions"][0]["observedGeneration"] == 1)
        conformance.apply("class-bump", [gateway_class(2)])
        status = await conformance.eventually(
            key, lambda s: s["conditions"][0]["observedGeneration"] == 2
        )
        assert conditions(status)["Accepted"] == ("True", "Accepted")


async def test_gateway_update_listener_hostname(conformance: Conformance) -> None:
    """A route refused for its hostname is accepted once the listener's hostname matches."""
    name = "gateway-update-listener-hostname"
    key = f"HTTPRoute/{INFRA}/httproute-update-listener-hostname"

    def objects(hostname: str, generation: int) -> list[dict[str, Any]]:
        return [
            gateway(name, listener("http", conformance.port, hostname=hostname),
                    generation=generation),
            route("httproute-update-listener-hostname", [parent(name)],
                  [rule(to("infra-backend-v1"))], hostnames=["accepted.example.com"]),
        ]  # fmt: skip

    async with conformance.applied("update-hostname", objects("rejected.example.com", 1)):
        await conformance.eventually(
            key,
            lambda s: parent_conditions(s)["Accepted"] == ("False", "NoMatchingListenerHostname"),
        )
        conformance.apply("update-hostname", objects("accepted.example.com", 2))
        await conformance.eventually(
            key, lambda s: parent_conditions(s)["Accepted"] == ("True", "Accepted")
        )
        http = (await listeners_of(conformance, name))["http"]
        assert http["attachedRoutes"] == 1
        await conformance.expect(name, "accepted.example.com", "/", backend="infra-backend-v1")


async def test_gatewayclass_supported_version_condition(conformance: Conformance) -> None:
    """SupportedVersion follows the GatewayClass CRD's bundle-version annotation."""
    key = f"GatewayClass/{CLASS}"

    def crd(version: str | None) -> list[dict[str, Any]]:
        annotations = (
            {} if version is None else {"gateway.networking.k8s.io/bundle-version": version}
        )
        return [
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {
                    "name": "gatewayclasses.gateway.networking.k8s.io",
                    "annotations": annotations,
                },
                "spec": {"group": GROUP, "names": {"kind": "GatewayClass"}},
            }
        ]

    def supported(wanted: str) -> Any:
        return lambda s: conditions(s)["SupportedVersion"][0] == wanted

    status = await conformance.eventually(key, supported("True"))
    assert conditions(status)["Accepted"] == ("True", "Accepted")
    async with conformance.applied("crds", crd(None)):
        await conformance.eventually(key, supported("False"))
        for version, wanted in (("v1.6.1", "True"), ("v0.0.0", "False"), ("v1.6.1", "True")):
            conformance.apply("crds", crd(version))
            status = await conformance.eventually(key, supported(wanted))
        assert conditions(status)["SupportedVersion"] == ("True", "SupportedVersion")


async def test_gateway_invalid_parameters_ref(conformance: Conformance) -> None:
    """A Gateway's infrastructure.parametersRef that names parameters this controller does
    not have: Accepted False, InvalidParameters (and nothing served)."""
    name = "gateway-invalid-parameters-ref"
    body = gateway(name, listener("http", conformance.port))
    body["spec"]["infrastructure"] = {
        "parametersRef": {"group": "invalid.io", "kind": "InvalidParameters", "name": "invalid"}
    }
    async with conformance.applied(name, [body]):
        status = await conformance.eventually(f"Gateway/{INFRA}/{name}", lambda s: s["conditions"])
        assert conditions(status)["Accepted"] == ("False", "InvalidParameters")
