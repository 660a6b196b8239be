"""TLS both ways: Ingress TLS served by SNI with certificates over SDS, and Envoy talking to
the xDS server over mutual TLS set up by `xds-server bootstrap --certs-dir`."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc

from bench.lab.backend import Backend
from bench.lab.certs import init_certs
from bench.lab.xds import (
    XdsEnvoy,
    XdsServer,
    endpoint_slice,
    https_get,
    ingress,
    rule,
    service,
    tls_secret,
    write_manifests,
)
from xds_server.certs import pki
from xds_server.certs.directory import DEFAULT_IDENTITY

pytestmark = pytest.mark.timeout(90)
DAY = timedelta(days=1)


def leaf(ca: pki.Pair, common: str, name: str, usage: pki.Usage = "server") -> pki.Pair:
    """A one-day ECDSA leaf from the product's own issuer."""
    return pki.issue_leaf(ca, common, [name], usage, DAY, "ecdsa-p256")


async def test_ingress_tls_hosts_are_served_by_sni_with_their_secrets(
    workdir: Path, manifests: Path, backends: dict[str, Backend], processes: list[Any]
) -> None:
    ca = pki.issue_ca("test-ca", DAY, "ecdsa-p256")
    foo, bar = leaf(ca, "foo", "foo.example.com"), leaf(ca, "bar", "bar.example.com")
    trusted = ca.certificate
    objects: list[dict[str, Any]] = []
    for name in "ab":
        objects += [
            service(name, [("http", 80)]),
            endpoint_slice(name, "http", backends[name].port, ["127.0.0.1"]),
        ]
    objects += [
        tls_secret("foo-tls", foo.certificate, foo.key),
        tls_secret("bar-tls", bar.certificate, bar.key),
        ingress(
            "web",
            [
                rule("foo.example.com", ("/", "Prefix", "a", 80)),
                rule("bar.example.com", ("/", "Prefix", "b", 80)),
            ],
            tls=[
                {"hosts": ["foo.example.com"], "secretName": "foo-tls"},
                {"hosts": ["bar.example.com"], "secretName": "bar-tls"},
            ],
        ),
    ]
    write_manifests(manifests, "app", objects)
    server = await XdsServer(workdir, manifests).start()
    processes.append(server)
    envoy = XdsEnvoy(workdir, server, "tls-node")
    processes.append(envoy)
    await envoy.start()
    body, names = await https_get(server.envoy_https_port, "foo.example.com", ca.certificate)
    assert (body, names) == ("a", ["foo.example.com"])
    assert await https_get(server.envoy_https_port, "bar.example.com", trusted) == (
        "b",
        ["bar.example.com"],
    )


async def test_envoy_gets_its_config_over_mutual_tls_and_strangers_are_refused(
    workdir: Path, manifests: Path, backends: dict[str, Backend], processes: list[Any]
) -> None:
    certs = init_certs(workdir / "certs")
    write_manifests(
        manifests,
        "app",
        [
            service("a", [("http", 80)]),
            endpoint_slice("a", "http", backends["a"].port, ["127.0.0.1"]),
            ingress("i", [rule(None, ("/", "Prefix", "a", 80))]),
        ],
    )
    server = await XdsServer(workdir, manifests, certs_dir=certs.root).start()
    processes.append(server)
    envoy = XdsEnvoy(workdir, server, "mtls-node", certs_dir=certs.root)
    processes.append(envoy)
    await envoy.start()  # waits for ingress_http, which only the server can give
    assert (await envoy.stats(r"^cluster\.xds_cluster\.ssl\.handshake$"))[
        "cluster.xds_cluster.ssl.handshake"
    ] >= 1

    authority = certs.authority()
    assert authority is not None
    ca = authority.signer
    same_ca_wrong_identity = leaf(ca, "envoy", "spiffe://envoy-lifecycle/someone", "client")
    other_ca = pki.issue_ca("someone-else", DAY, "ecdsa-p256")
    other = leaf(other_ca, "envoy", DEFAULT_IDENTITY, "client")
    for client in (None, other, same_ca_wrong_identity):
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca.certificate,
            private_key=client.key if client else None,
            certificate_chain=client.certificate if client else None,
        )
        options = [("grpc.ssl_target_name_override", "xds-server")]
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{server.grpc_port}", credentials, options
        ) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            # No request is sent: the server refuses when the stream opens, and a request
            # racing that refusal would end the call with the client's own INTERNAL error.
            call = stub.DeltaAggregatedResources(iter([]))
            code = await call.code()
            if client is same_ca_wrong_identity:  # the handshake works, the stream does not
                assert code == grpc.StatusCode.PERMISSION_DENIED
            else:
                assert code == grpc.StatusCode.UNAVAILABLE
    metrics = await server.metrics()
    assert "xds_clients_refused_total 1.0" in metrics
