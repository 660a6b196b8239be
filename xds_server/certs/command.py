"""`xds-server certs init | rotate | check`: the certificate directory from a shell.

Each prints what it did or found, one line per store, and exits non-zero when the operator
must act. `rotate` may run for a few propagation delays (a CA rotation); SIGTERM stops it
between steps, and a later `rotate` carries on where the stores say.
"""

from __future__ import annotations

import argparse
import datetime
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from xds_server.certs import pki
from xds_server.certs.directory import (
    DEFAULT_IDENTITY,
    CertDirectory,
    CertError,
    Profile,
    service_names,
)
from xds_server.certs.rotation import Rotator, StepResult, initialise, inspect


def profile_from(args: argparse.Namespace) -> Profile:
    names = service_names(args.service, args.namespace) + list(args.san)
    return Profile(
        algorithm=args.algorithm,
        ca_lifetime=datetime.timedelta(seconds=args.ca_lifetime),
        leaf_lifetime=datetime.timedelta(seconds=args.leaf_lifetime),
        server_names=list(dict.fromkeys(names)),
        client_identity=args.client_identity,
    )


def run(args: argparse.Namespace) -> int:
    """Raises CertError or OSError for the caller to print as one line."""
    certs = _certificates(args)
    if args.certs_command == "check":
        return _check(certs)
    if args.certs_command == "init":
        _print(initialise(certs, profile_from(args)))
        _print(Rotator(certs, args.propagation_delay).step())
        return 0
    return _rotate(certs, args)


def _certificates(args: argparse.Namespace) -> CertDirectory:
    if args.dir is not None:
        return CertDirectory(args.dir)
    from xds_server.certs.secret_api import secret_stores

    try:
        stores = secret_stores(args.kube_namespace, args.kubeconfig)
    except ImportError as exc:
        raise CertError("--kube-namespace needs: pip install 'envoy-lifecycle[kube]'") from exc
    except Exception as exc:  # no service account, an unreadable kubeconfig
        raise CertError(f"cannot configure the Kubernetes client: {exc}") from exc
    return CertDirectory(None, dict(stores))


def _check(certs: CertDirectory) -> int:
    findings = inspect(certs)
    if not findings:
        print(f"{certs.where}: no certificate stores (run `xds-server certs init`)")
        return 1
    for finding in findings:
        print(f"{finding.store:<7} {finding.level.upper():<9} {finding.message}")
    return 0 if all(finding.level == "ok" for finding in findings) else 1


def _rotate(certs: CertDirectory, args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_signal(signum: int, _: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    rotator = Rotator(certs, args.propagation_delay)
    result = rotator.step(force=args.force, rotate_ca=args.ca)
    _print(result)
    while _rotating(certs) and not stop.is_set():
        wait = (result.wake or pki.now()) - pki.now()
        if stop.wait(max(0.0, wait.total_seconds())):
            break
        result = rotator.step()
        _print(result)
    if _rotating(certs):
        print("stopped with a CA rotation in progress; the next `certs rotate` continues it")
        return 1
    return 0


def _rotating(certs: CertDirectory) -> bool:
    authority = certs.authority()
    return authority is not None and authority.phase != "steady"


def _print(result: StepResult) -> None:
    for action in result.actions:
        print(action, flush=True)


def add_parser(commands: argparse._SubParsersAction[Any], **kw: Any) -> None:
    """`certs` and its three subcommands."""
    from envoy_lifecycle.cmdline import duration

    group = commands.add_parser(
        "certs",
        help="issue, rotate and check the mTLS certificates",
        description="A CA and the server and Envoy leaves in DIR/{ca,server,envoy}, each "
        "written like a Kubernetes secret volume (a `..data` swap: never half-written).",
        **kw,
    )
    sub = group.add_subparsers(dest="certs_command", required=True, metavar="COMMAND")
    init = sub.add_parser(
        "init",
        help="create the CA (kept if present) and issue the leaves",
        description="Create DIR's CA unless it exists (an existing CA is never replaced), "
        "record the profile and issue whatever leaf is missing or no longer matches it.",
        **kw,
    )
    rotate = sub.add_parser(
        "rotate",
        help="renew what is due (everything with --force; the CA with --ca)",
        description="Renew leaves past two thirds of their lifetime (all with --force); "
        "with --ca, rotate the CA in three steps that never break trust.",
        **kw,
    )
    check = sub.add_parser(
        "check",
        help="report expiry and consistency; non-zero when something needs attention",
        description="One line per store; exit 1 when a certificate is missing, invalid, "
        "expired or due for renewal.",
        **kw,
    )
    for parser in (init, rotate, check):
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument("--dir", type=Path, metavar="DIR", help="the certificate directory")
        where.add_argument(
            "--kube-namespace",
            metavar="NS",
            help="keep the stores as kubernetes.io/tls Secrets in NS (xds-server-ca, "
            "xds-server-tls, envoy-tls) instead",
        )
        parser.add_argument(
            "--kubeconfig",
            default=None,
            metavar="PATH",
            help="with --kube-namespace: a kubeconfig instead of the pod's service account",
        )
    for parser in (init, rotate):
        parser.add_argument(
            "--propagation-delay",
            type=duration,
            default="2s",
            metavar="DURATION",
            help="wait between CA rotation steps so every proxy sees each one (locally "
            "milliseconds do; with kubelet-mounted Secrets use 90s or more)",
        )
    init.add_argument(
        "--algorithm", choices=pki.ALGORITHMS, default="ecdsa-p256", help="key algorithm"
    )
    init.add_argument(
        "--ca-lifetime",
        type=duration,
        default="1825d",
        metavar="DURATION",
        help="CA validity (seconds, or 7d / 12h / 30m)",
    )
    init.add_argument(
        "--leaf-lifetime",
        type=duration,
        default="7d",
        metavar="DURATION",
        help="server and Envoy certificate validity; renewed at two thirds",
    )
    init.add_argument("--service", default="xds-server", help="the server's Service name")
    init.add_argument(
        "--namespace", default="envoy-lifecycle", help="the server's namespace (for its SANs)"
    )
    init.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="NAME",
        help="another DNS name or IP address for the server certificate (repeatable)",
    )
    init.add_argument(
        "--client-identity",
        default=DEFAULT_IDENTITY,
        metavar="URI",
        help="URI SAN of Envoy's client certificate, required by the server",
    )
    rotate.add_argument("--force", action="store_true", help="renew both leaves now")
    rotate.add_argument("--ca", action="store_true", help="rotate the CA (and then the leaves)")


__all__ = ["CertError", "add_parser", "run"]
