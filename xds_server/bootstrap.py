"""Envoy's bootstrap: admin on a unix socket, ADS to the xDS server, the probe listener.

Written atomically (temporary file, fsync, rename), so an Envoy (or a hot-restart epoch)
never reads half a file. With a certificate directory, Envoy talks to the server over mTLS
and reads its certificates through SDS files that watch the directory: a kubelet `..data`
swap (or `xds-server certs rotate`) is picked up without a restart.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
HTTP_PROTOCOL_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
CLIENT_SECRET, CA_SECRET = "xds_client_certificate", "xds_server_ca"


@dataclass(frozen=True)
class BootstrapConfig:
    xds_host: str
    xds_port: int
    admin_socket: Path
    node_id: str
    node_cluster: str = "envoy"
    certs_dir: Path | None = None
    sotw: bool = False
    probe_address: str = "0.0.0.0"
    probe_port: int = 8002
    server_name: str = "xds-server"


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _probe_listener(config: BootstrapConfig) -> dict[str, Any]:
    """Only /ready and /stats, proxied to the admin socket: health checks never reach the admin."""
    routes = [
        {"match": {"path": "/ready"}, "route": {"cluster": "envoy_admin"}},
        {"match": {"prefix": "/stats"}, "route": {"cluster": "envoy_admin"}},
        {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
    ]
    manager = {
        "@type": HCM,
        "stat_prefix": "probe",
        "route_config": {"virtual_hosts": [{"name": "probe", "domains": ["*"], "routes": routes}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    return {
        "name": "probe",
        "stat_prefix": "probe",
        "address": _address(config.probe_address, config.probe_port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }


def _sds_file(path: Path, watched: Path) -> dict[str, Any]:
    return {"path_config_source": {"path": str(path), "watched_directory": {"path": str(watched)}}}


def _xds_cluster(config: BootstrapConfig, sds_dir: Path | None) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": "xds_cluster",
        "type": "STRICT_DNS",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": "xds_cluster",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": _address(config.xds_host, config.xds_port)}}
                    ]
                }
            ],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_PROTOCOL_OPTIONS,
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": {"interval": "30s", "timeout": "10s"}
                    }
                },
            }
        },
    }
    if config.certs_dir is not None and sds_dir is not None:
        watched = envoy_certs(config.certs_dir)
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": UPSTREAM_TLS,
                "sni": config.server_name,
                "common_tls_context": {
                    "tls_certificate_sds_secret_configs": [
                        {
                            "name": CLIENT_SECRET,
                            "sds_config": _sds_file(sds_dir / "client.json", watched),
                        }
                    ],
                    "combined_validation_context": {
                        # The CA alone is not enough: the server must be the server.
                        "default_validation_context": {
                            "match_typed_subject_alt_names": [
                                {"san_type": "DNS", "matcher": {"exact": config.server_name}}
                            ]
                        },
                        "validation_context_sds_secret_config": {
                            "name": CA_SECRET,
                            "sds_config": _sds_file(sds_dir / "ca.json", watched),
                        },
                    },
                },
            },
        }
    return cluster


def envoy_certs(certs_dir: Path) -> Path:
    """Envoy's store in the certificate directory (`xds-server certs`): DIR/envoy."""
    return certs_dir / "envoy"


def sds_files(certs_dir: Path) -> dict[str, dict[str, Any]]:
    """The SDS files: secrets whose data are the visible names of Envoy's store, so a
    `..data` swap there is picked up at once and as a whole."""
    certs_dir = envoy_certs(certs_dir)
    client = {
        "@type": SECRET_TYPE,
        "name": CLIENT_SECRET,
        "tls_certificate": {
            "certificate_chain": {"filename": str(certs_dir / "tls.crt")},
            "private_key": {"filename": str(certs_dir / "tls.key")},
        },
    }
    ca = {
        "@type": SECRET_TYPE,
        "name": CA_SECRET,
        "validation_context": {"trusted_ca": {"filename": str(certs_dir / "ca.crt")}},
    }
    return {"client.json": {"resources": [client]}, "ca.json": {"resources": [ca]}}


def render(config: BootstrapConfig, sds_dir: Path | None = None) -> dict[str, Any]:
    api = "GRPC" if config.sotw else "DELTA_GRPC"
    return {
        "node": {"id": config.node_id, "cluster": config.node_cluster},
        "admin": {"address": {"pipe": {"path": str(config.admin_socket), "mode": 0o600}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": api,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}],
                "set_node_on_first_message_only": True,
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "listeners": [_probe_listener(config)],
            "clusters": [
                _xds_cluster(config, sds_dir),
                {
                    "name": "envoy_admin",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "envoy_admin",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {"pipe": {"path": str(config.admin_socket)}}
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                },
            ],
        },
    }


def write_atomically(path: Path, document: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        json.dump(document, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write(out: Path, config: BootstrapConfig) -> None:
    """The bootstrap at `out`, and beside it (with mTLS) the SDS files it names."""
    sds_dir = None
    if config.certs_dir is not None:
        sds_dir = out.parent / f"{out.stem}-sds"
        sds_dir.mkdir(parents=True, exist_ok=True)
        for name, document in sds_files(config.certs_dir).items():
            write_atomically(sds_dir / name, document)
    write_atomically(out, render(config, sds_dir))
