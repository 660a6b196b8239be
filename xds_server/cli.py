"""Command line: `xds-server serve` (the control plane) and `xds-server bootstrap` (Envoy's
bootstrap). User mistakes end in one line on stderr and a non-zero status."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from envoy_lifecycle.cmdline import (
    OneLineParser,
    add_logging_flags,
    duration,
    help_formatter,
    host_port,
    ip_address,
    port,
    positive_int,
    size,
)
from envoy_lifecycle.logs import configure
from xds_server.certs import command as certs_command
from xds_server.certs.directory import DEFAULT_IDENTITY
from xds_server.model.gateway import DEFAULT_CONTROLLER
from xds_server.model.gateway.types import ROUTE_BUDGET
from xds_server.sources.objects import Limits

LIMIT_FLAGS = (
    ("--max-file-size", "file_bytes", "largest manifest file read, in bytes (or 512KiB, 16MiB)"),
    ("--max-files", "files", "manifest files read"),
    ("--max-documents", "documents", "YAML documents in one file"),
    ("--max-values", "values", "values in one document, YAML aliases expanded (an alias bomb "
     "has billions)"),
    ("--max-depth", "depth", "nesting of one document"),
    ("--max-objects", "objects", "objects in all the input together"),
)  # fmt: skip
"""Each bound of `Limits`: its flag, its field, what it bounds."""


def _limits(parser: argparse.ArgumentParser) -> None:
    """Bounds on the work any input may cause; past one, that input is rejected in one line."""
    defaults = Limits()
    group = parser.add_argument_group("input limits (past one, the input is rejected)")
    for flag, attribute, meaning in LIMIT_FLAGS:
        is_size = attribute == "file_bytes"
        group.add_argument(
            flag,
            dest=attribute,
            type=size if is_size else positive_int,
            default=getattr(defaults, attribute),
            metavar="SIZE" if is_size else "N",
            help=meaning,
        )

    group.add_argument(
        "--max-routes-per-object",
        dest="route_budget",
        type=positive_int,
        default=ROUTE_BUDGET,
        metavar="N",
        help="Envoy routes one HTTPRoute may become (matches x hostnames x listeners, every "
        "proxy holds them all); past it the route is not served and its status says why",
    )


def _security(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--certs-dir",
        type=Path,
        metavar="DIR",
        help="mutual TLS with the certificate directory DIR (`xds-server certs init`): "
        "the server reads DIR/server, Envoy DIR/envoy, each a secret-volume layout "
        "(tls.crt, tls.key, ca.crt)",
    )
    group.add_argument(
        "--insecure", action="store_true", help="plaintext gRPC: must be asked for explicitly"
    )


def network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR block such as 10.96.200.0/24."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected a network (CIDR), got {text!r}: {exc}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="xds-server",
        description="Kubernetes Ingress manifests -> Envoy config over ADS (SotW and delta).",
        formatter_class=help_formatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the control plane",
        formatter_class=help_formatter,
        description="Serve ADS from Kubernetes objects: a directory of manifests (reloaded on "
        "change) or the Kubernetes API (listed and watched).",
    )
    inputs = serve.add_mutually_exclusive_group(required=True)
    inputs.add_argument(
        "--manifests",
        type=Path,
        metavar="DIR",
        help="directory of YAML/JSON manifests (Ingress, IngressClass, Service, "
        "EndpointSlice, Secret)",
    )
    inputs.add_argument(
        "--kubernetes",
        action="store_true",
        help="list and watch those objects in the Kubernetes API (in-cluster service "
        "account, or --kubeconfig)",
    )
    serve.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        metavar="PATH",
        help="with --kubernetes: a kubeconfig file instead of the pod's service account",
    )
    cluster = serve.add_argument_group("with --kubernetes")
    cluster.add_argument(
        "--kube-namespace",
        default=None,
        metavar="NS",
        help="this server's namespace: its leader Lease, the Envoy Service and (with --rotate) "
        "the certificate Secrets; $POD_NAMESPACE, else envoy-lifecycle",
    )
    cluster.add_argument(
        "--identity",
        default=None,
        help="this replica's name in the Lease; $POD_NAME, else the host name",
    )
    cluster.add_argument(
        "--envoy-service",
        default="envoy",
        metavar="NAME",
        help="the Envoy Service whose load-balancer address the leader writes into the "
        "status of every Ingress served",
    )
    cluster.add_argument(
        "--status-address",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="write this IP or host name instead (repeatable; for NodePort or kind)",
    )
    serve.add_argument(
        "--listen",
        type=host_port,
        default="0.0.0.0:8001",
        metavar="HOST:PORT",
        help="gRPC (ADS) address",
    )
    serve.add_argument(
        "--http-listen",
        type=host_port,
        default="0.0.0.0:8081",
        metavar="HOST:PORT",
        help="/healthz, /readyz and /metrics",
    )
    serve.add_argument(
        "--envoy-address",
        type=ip_address,
        default="0.0.0.0",
        metavar="IP",
        help="address Envoy's ingress listeners bind (an IP: Envoy binds no names)",
    )
    serve.add_argument("--envoy-http-port", type=port, default=8080, help="ingress_http port")
    serve.add_argument("--envoy-https-port", type=port, default=8443, help="ingress_https port")
    serve.add_argument(
        "--envoy-probe-port",
        type=port,
        default=8002,
        help="probe listener port (it lives in the bootstrap)",
    )
    serve.add_argument(
        "--gateway-controller-name",
        default=DEFAULT_CONTROLLER,
        metavar="NAME",
        help="serve the Gateways of GatewayClasses whose spec.controllerName is this",
    )
    serve.add_argument(
        "--gateway-address-pool",
        type=network,
        default=None,
        metavar="CIDR",
        help="give each Gateway without spec.addresses its own address from this network "
        "(picked from its namespace/name: the same on every replica and restart); unset: "
        "every Gateway at --envoy-address",
    )
    serve.add_argument(
        "--merge-gateways",
        action="store_true",
        help="let Gateways at one address share a port (their listeners merged, each with "
        "the others' hosts and SNI names); default off: the oldest Gateway holds a port and "
        "another's listener there is PortUnavailable, so no tenant's Gateway takes another's "
        "traffic",
    )
    serve.add_argument(
        "--ingress-class",
        default=None,
        help="serve only Ingresses of this class (and class-less ones if this "
        "IngressClass is the default); all when unset",
    )
    _security(serve)
    serve.add_argument(
        "--rotate",
        action="store_true",
        help="renew leaves at two thirds of their lifetime and rotate the CA when it is due, "
        "inside the server: in --certs-dir DIR (which holds the CA), or with --kubernetes in "
        "the Secrets of --kube-namespace, by the leader only",
    )
    serve.add_argument(
        "--client-identity",
        default=DEFAULT_IDENTITY,
        metavar="URI",
        help="with --certs-dir: the URI SAN a client certificate must carry",
    )
    serve.add_argument(
        "--propagation-delay",
        type=duration,
        default="2s",
        metavar="DURATION",
        help="with --rotate: wait between CA rotation steps (90s or more with Secrets)",
    )
    serve.add_argument(
        "--stuck-stream-timeout",
        type=duration,
        default="60s",
        metavar="DURATION",
        help="drop an ADS stream whose proxy leaves a response unanswered this long",
    )
    _limits(serve)
    add_logging_flags(serve)
    boot = commands.add_parser(
        "bootstrap",
        help="write Envoy's bootstrap",
        formatter_class=help_formatter,
        description="Write Envoy's bootstrap JSON atomically: admin on a unix socket, ADS to the "
        "xDS server (delta unless --sotw), the probe listener, mTLS through watched SDS files.",
    )
    boot.add_argument("out", type=Path, help="where to write the bootstrap")
    boot.add_argument(
        "--xds-address", type=host_port, required=True, metavar="HOST:PORT", help="the xDS server"
    )
    boot.add_argument(
        "--admin-socket",
        type=Path,
        required=True,
        metavar="PATH",
        help="unix socket of Envoy's admin API",
    )
    boot.add_argument("--node-id", default=None, help="Envoy's node id; $POD_NAME when not given")
    boot.add_argument(
        "--node-cluster", default=None, help="Envoy's node cluster; $ENVOY_CLUSTER or envoy"
    )
    boot.add_argument("--probe-port", type=port, default=8002, help="probe listener port")
    boot.add_argument("--sotw", action="store_true", help="state-of-the-world ADS instead of delta")
    _security(boot)
    boot.add_argument(
        "--xds-server-name",
        default="xds-server",
        metavar="NAME",
        help="with --certs-dir: SNI sent to the server and the DNS SAN its certificate must have",
    )
    add_logging_flags(boot)
    certs_command.add_parser(commands, formatter_class=help_formatter)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prog = f"xds-server {args.command}"
    if args.command != "certs":
        configure("xds_server", args.log_format, args.log_level)
    if args.command == "bootstrap":
        return _bootstrap(prog, args)
    if args.command == "certs":
        return _certs(prog, args)
    import asyncio

    from xds_server.app import ControlPlane, ServeConfig, StartupError
    from xds_server.cluster.duties import DutiesConfig
    from xds_server.model.gateway import GatewaySettings
    from xds_server.translate.listeners import EnvoyPorts

    (grpc_host, grpc_port), (http_host, http_port) = args.listen, args.http_listen
    config = ServeConfig(
        manifests=args.manifests,
        grpc_host=grpc_host,
        grpc_port=grpc_port,
        http_host=http_host,
        http_port=http_port,
        ports=EnvoyPorts(args.envoy_address, args.envoy_http_port, args.envoy_https_port),
        ingress_class=args.ingress_class,
        gateway=GatewaySettings(
            args.gateway_controller_name,
            args.gateway_address_pool,
            args.envoy_address,
            merge=args.merge_gateways,
            route_budget=args.route_budget,
        ),
        certs_dir=args.certs_dir,
        rotate=args.rotate,
        client_identity=args.client_identity,
        propagation_delay=args.propagation_delay,
        stuck_stream_timeout=args.stuck_stream_timeout,
        kubeconfig=args.kubeconfig,
        limits=Limits(**{attribute: getattr(args, attribute) for _, attribute, _ in LIMIT_FLAGS}),
        duties=DutiesConfig(
            namespace=args.kube_namespace or os.environ.get("POD_NAMESPACE", "envoy-lifecycle"),
            identity=args.identity or os.environ.get("POD_NAME") or socket.gethostname(),
            envoy_service=args.envoy_service,
            status_addresses=list(args.status_address),
            rotate=args.rotate and args.kubernetes,
            propagation_delay=args.propagation_delay,
        ),
    )
    if args.stuck_stream_timeout <= 0:
        print(f"{prog}: error: --stuck-stream-timeout must be more than 0", file=sys.stderr)
        return 2
    if args.kubeconfig is not None and not args.kubernetes:
        print(f"{prog}: error: --kubeconfig needs --kubernetes", file=sys.stderr)
        return 2
    if args.certs_dir is not None and not args.certs_dir.is_dir():
        print(f"{prog}: error: no such directory: {args.certs_dir}", file=sys.stderr)
        return 2
    if args.rotate and args.certs_dir is None and not args.kubernetes:
        print(f"{prog}: error: --rotate needs --certs-dir or --kubernetes", file=sys.stderr)
        return 2
    try:
        return asyncio.run(ControlPlane(config).serve())
    except StartupError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1


def _bootstrap(prog: str, args: argparse.Namespace) -> int:
    from xds_server.bootstrap import BootstrapConfig, write

    node_id = args.node_id or os.environ.get("POD_NAME")
    node_cluster = args.node_cluster or os.environ.get("ENVOY_CLUSTER", "envoy")
    if not node_id:
        print(f"{prog}: error: --node-id is required (or set POD_NAME)", file=sys.stderr)
        return 2
    if args.certs_dir is not None and not args.certs_dir.is_dir():
        print(f"{prog}: error: no such directory: {args.certs_dir}", file=sys.stderr)
        return 2
    host, port = args.xds_address
    config = BootstrapConfig(
        xds_host=host,
        xds_port=port,
        admin_socket=args.admin_socket,
        node_id=node_id,
        node_cluster=node_cluster,
        certs_dir=args.certs_dir,
        sotw=args.sotw,
        probe_port=args.probe_port,
        server_name=args.xds_server_name,
    )
    try:
        write(args.out, config)
    except OSError as exc:
        print(f"{prog}: error: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


def _certs(prog: str, args: argparse.Namespace) -> int:
    prog = f"{prog} {args.certs_command}"
    try:
        return certs_command.run(args)
    except certs_command.CertError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"{prog}: error: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
    except Exception as exc:
        status = getattr(exc, "status", None)  # the Kubernetes API said no
        if status is None:
            raise
        reason = getattr(exc, "reason", "") or ""
        print(f"{prog}: error: Kubernetes API: HTTP {status} {reason}".rstrip(), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
