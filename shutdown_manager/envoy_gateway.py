"""`envoy-gateway`: our sidecar and hook behind Envoy Gateway's command line.

Envoy Gateway lets its users swap the shutdown manager's image
(`provider.kubernetes.shutdownManager.image`) and then runs, in that image:

    envoy-gateway envoy shutdown-manager [--ready-timeout=D]           (the container)
    envoy-gateway envoy shutdown [--drain-timeout=D] [--min-drain-duration=D]
        [--exit-at-connections=N] [--health-check-failure-delay=D]     (its preStop exec)

with Envoy's preStop an httpGet on :19002/shutdown/ready, probes on :19002/healthz, Envoy's
admin on http://127.0.0.1:19000, and Envoy's own stats and ready listeners on 19001 and
19003. This module accepts exactly that command line (Go's duration syntax, `--flag=value`
or `--flag value`, their defaults) and runs `serve` and `drain` with it: the drain counts
the serving listeners only, `/shutdown/ready` answers within milliseconds of the end (500
after the ready timeout, as theirs), the exit codes are ours, and a restarted sidecar
restores an Envoy it finds DRAINING. A flag or command of theirs we do not implement is an
error that names it, never ignored.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from envoy_lifecycle.cmdline import (
    OneLineParser,
    add_logging_flags,
    go_duration,
    help_formatter,
    host_port,
)
from envoy_lifecycle.logs import configure
from shutdown_manager import __version__
from shutdown_manager.cli import FILE_PATH, SOCKET_PATH, admin_address, non_negative_int
from shutdown_manager.hook import run_hook
from shutdown_manager.logs import LOGGER_NAME
from shutdown_manager.policy import DrainPolicy, with_overrides

PROG = "envoy-gateway"
LISTEN = "0.0.0.0:19002"
ADMIN = "http://127.0.0.1:19000"
READY_PATH = "/shutdown/ready"
CONTROL_SOCKET = "/tmp/envoy-lifecycle-shutdown.sock"
"""Both the server and its hook run in the shutdown-manager container: its own /tmp (an
emptyDir in Envoy Gateway's read-only-root variant) is theirs alone."""
READY_FILE = "/tmp/shutdown-ready"
READY_TIMEOUT = "610s"
IGNORED_LISTENERS = (
    "*_19001",
    "*_19003",
    "envoy-gateway-proxy-*",
    "eg-stats-http",
    "eg-ready-http",
)
"""Envoy Gateway's bootstrap listeners (stats on 19001, ready on 19003), by stat name,
listener name and HTTP connection manager prefix: probes and scrapes are not traffic."""
DEFAULTS = DrainPolicy(
    drain_timeout=60.0,
    min_drain_duration=10.0,
    exit_at_connections=0,
    ignore_listeners=IGNORED_LISTENERS,
)
"""Envoy Gateway's own defaults for `envoy shutdown`; the rest of the policy is ours."""

THEIR_OTHER_COMMANDS = ("server", "certgen", "xds-test", "version")
POLICY_FIELDS = (
    "drain_timeout",
    "min_drain_duration",
    "exit_at_connections",
    "health_check_failure_delay",
)
"""The policy fields `envoy shutdown` takes (the hook sends those given to the server)."""


def _ours(parser: argparse.ArgumentParser, server: bool) -> None:
    """Flags Envoy Gateway never passes: for tests and pods of another shape."""
    group = parser.add_argument_group("envoy-lifecycle only (Envoy Gateway passes none of these)")
    if server:
        group.add_argument(
            "--listen",
            type=host_port,
            default=LISTEN,
            metavar="HOST:PORT",
            help="HTTP server: /healthz, /shutdown/ready, /metrics, /status",
        )
    group.add_argument(
        "--admin-address",
        type=admin_address,
        default=ADMIN,
        metavar="ADDRESS",
        help="Envoy's admin API",
    )
    group.add_argument(
        "--control-socket",
        type=SOCKET_PATH,
        default=Path(CONTROL_SOCKET),
        metavar="PATH",
        help="unix socket (0600) between the hook and the server",
    )
    group.add_argument(
        "--ready-file",
        type=FILE_PATH,
        default=Path(READY_FILE),
        metavar="PATH",
        help="written when the drain ends (also when the hook drained alone)",
    )
    if server:
        add_logging_flags(group)  # type: ignore[arg-type]
        group.set_defaults(log_format="json")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="envoy-lifecycle's drop-in for Envoy Gateway's shutdown manager image: "
        "the `envoy shutdown-manager` container and the `envoy shutdown` preStop hook.",
        formatter_class=help_formatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    top = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    envoy = top.add_parser(
        "envoy", help="Envoy proxy management", allow_abbrev=False, formatter_class=help_formatter
    )
    commands = envoy.add_subparsers(dest="command", required=True, metavar="COMMAND")
    manager = commands.add_parser(
        "shutdown-manager",
        help="the sidecar: /healthz and /shutdown/ready on :19002, the drain's owner",
        description="Serve /healthz, /shutdown/ready (returns when the drain ends, 500 after "
        "--ready-timeout), /metrics and /status on :19002; drain when the preStop hook asks. "
        "A restarted sidecar restores an Envoy left DRAINING.",
        formatter_class=help_formatter,
        allow_abbrev=False,
    )
    manager.add_argument(
        "--ready-timeout",
        type=go_duration,
        default=READY_TIMEOUT,
        metavar="DURATION",
        help="how long /shutdown/ready waits before answering 500; above the hook's "
        "--drain-timeout, below terminationGracePeriodSeconds (Go duration)",
    )
    _ours(manager, server=True)
    shutdown = commands.add_parser(
        "shutdown",
        help="the preStop hook: drain Envoy, exit 0 drained, 3 deadline, 4 Envoy gone",
        description="Ask the shutdown-manager to drain (or drain from here if it cannot "
        "answer) and wait for the end. Exit 0: drained; 3: deadline passed with connections "
        "left; 4: Envoy gone or unreachable.",
        formatter_class=help_formatter,
        allow_abbrev=False,
    )
    for name, flag, kind, default, text in (
        (
            "health_check_failure_delay",
            "--health-check-failure-delay",
            go_duration,
            0.0,
            "drain the listeners first and fail the health check this long after",
        ),
        (
            "drain_timeout",
            "--drain-timeout",
            go_duration,
            DEFAULTS.drain_timeout,
            "the drain's deadline; below the pod's terminationGracePeriodSeconds",
        ),
        (
            "min_drain_duration",
            "--min-drain-duration",
            go_duration,
            DEFAULTS.min_drain_duration,
            "keep serving at least this long, while endpoints stop sending",
        ),
        (
            "exit_at_connections",
            "--exit-at-connections",
            non_negative_int,
            0,
            "release at or below this many connections on serving listeners",
        ),
    ):
        unit = "" if kind is non_negative_int else "s"
        shutdown.add_argument(
            flag,
            dest=name,
            type=kind,
            default=argparse.SUPPRESS,
            metavar="N" if kind is non_negative_int else "DURATION",
            help=f"{text} (default: {default:g}{unit})",
        )
    _ours(shutdown, server=False)
    return parser


def _refuse_unknown(argv: Sequence[str]) -> str | None:
    """A command of Envoy Gateway's that is not in this image: say so, by name."""
    words = [a for a in argv if not a.startswith("-")]
    if words[:1] and words[0] in THEIR_OTHER_COMMANDS:
        return (
            f"`{words[0]}` is Envoy Gateway's own; this image is envoy-lifecycle's drop-in "
            "for its shutdown manager only (`envoy shutdown-manager`, `envoy shutdown`)"
        )
    if (
        words[:1] == ["envoy"]
        and len(words) > 1
        and words[1] not in ("shutdown-manager", "shutdown")
    ):
        return (
            f"`envoy {words[1]}` is not supported by envoy-lifecycle's drop-in (it runs "
            "`envoy shutdown-manager` and `envoy shutdown`)"
        )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    refused = _refuse_unknown(argv)
    if refused is not None:
        print(f"{PROG}: error: {refused}", file=sys.stderr)
        return 2
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    prog = f"{PROG} envoy {args.command}"
    if unknown:
        print(
            f"{prog}: error: unknown flag or argument {unknown[0]!r}: envoy-lifecycle's "
            f"drop-in does not support it (see `{prog} --help`)",
            file=sys.stderr,
        )
        return 2
    configure(LOGGER_NAME, getattr(args, "log_format", "json"), getattr(args, "log_level", "info"))
    if args.command == "shutdown-manager":
        return _serve(prog, args)
    given: dict[str, Any] = {name: getattr(args, name) for name in POLICY_FIELDS if name in args}
    try:
        policy = with_overrides(DEFAULTS, given)[0]
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return run_hook(
        args.control_socket, args.admin_address, policy, args.ready_file, 1.0, given=given
    )


def _serve(prog: str, args: argparse.Namespace) -> int:
    import asyncio

    from shutdown_manager.server import ServeConfig, Sidecar, StartupError

    if args.ready_timeout <= 0:
        print(f"{prog}: error: --ready-timeout must be positive", file=sys.stderr)
        return 2
    host, port = args.listen
    config = ServeConfig(
        admin=args.admin_address,
        listen_host=host,
        listen_port=port,
        control_socket=args.control_socket,
        policy=DEFAULTS,
        ready_file=args.ready_file,
        wait_paths=(READY_PATH, "/shutdown"),
        wait_timeout=args.ready_timeout,
    )
    try:
        return asyncio.run(Sidecar(config).serve())
    except StartupError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted while starting", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
