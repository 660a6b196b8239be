"""Command line: `shutdown-manager serve` (the sidecar) and `shutdown-manager drain` (the hook).

User mistakes end in one line on stderr and a non-zero status, never a traceback.
Heavy modules (asyncio, aiohttp, httpx) are imported only by the commands that use them: the
preStop hook's start-up time delays the drain.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from envoy_lifecycle.cmdline import (
    OneLineParser,
    add_logging_flags,
    duration,
    help_formatter,
    host_port,
)
from envoy_lifecycle.logs import configure
from shutdown_manager import __version__
from shutdown_manager.address import AdminAddress, file_path, parse_admin_address, socket_path
from shutdown_manager.hook import run_hook
from shutdown_manager.logs import LOGGER_NAME
from shutdown_manager.policy import (
    FIELDS,
    HEARTBEAT,
    MIN_POLL_INTERVAL,
    DrainPolicy,
    with_overrides,
)

DEFAULT_ADMIN = "unix:///admin/admin.sock"
DEFAULT_CONTROL_SOCKET = "/admin/shutdown-manager.sock"
DEFAULT_LISTEN = "0.0.0.0:8090"
DEFAULTS = DrainPolicy()


def admin_address(text: str) -> AdminAddress:
    try:
        return parse_admin_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _argument(check: Callable[[str], Path]) -> Callable[[str], Path]:
    """A path check as an argparse type: its ValueError becomes argparse's one-line error."""

    def parse(text: str) -> Path:
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = check.__name__
    return parse


SOCKET_PATH, FILE_PATH = _argument(socket_path), _argument(file_path)


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--admin-address",
        type=admin_address,
        default=DEFAULT_ADMIN,
        metavar="ADDRESS",
        help="Envoy's admin API: unix:///path/admin.sock (recommended) or http://127.0.0.1:PORT",
    )
    parser.add_argument(
        "--admin-timeout",
        type=duration,
        metavar="DURATION",
        default=1.0,
        help="timeout of each admin call, in seconds (or 500ms, 2s)",
    )
    parser.add_argument(
        "--control-socket",
        type=SOCKET_PATH,
        default=Path(DEFAULT_CONTROL_SOCKET),
        metavar="PATH",
        help="unix socket (mode 0600) through which the hook asks the sidecar to drain",
    )
    add_logging_flags(parser)


def _drain_flags(parser: argparse.ArgumentParser, defaults: bool = True) -> None:
    """The policy flags; without `defaults` a flag not given is left out of the namespace
    (how the hook tells the flags it was given from the ones it was not)."""
    group = _PolicyGroup(parser.add_argument_group("drain policy"), defaults)
    group.add_argument(
        "--drain-timeout",
        type=duration,
        metavar="DURATION",
        default=DEFAULTS.drain_timeout,
        help="hard deadline from the trigger, in seconds; keep it below the pod's "
        "terminationGracePeriodSeconds minus a margin",
    )
    group.add_argument(
        "--min-drain-duration",
        type=duration,
        metavar="DURATION",
        default=DEFAULTS.min_drain_duration,
        help="keep serving this long even with no connections, while endpoints, kube-proxy "
        "and load balancers stop sending new ones",
    )
    group.add_argument(
        "--exit-at-connections",
        type=non_negative_int,
        default=DEFAULTS.exit_at_connections,
        metavar="N",
        help="release once active connections on serving listeners are at or below this",
    )
    group.add_argument(
        "--ignore-listener",
        action="append",
        default=[],
        metavar="NAME_OR_GLOB",
        help="leave a listener out of the count (repeatable; exact name, stat name or glob; "
        "the admin listener and per-worker copies are always left out)",
    )
    group.add_argument(
        "--quiet-period",
        type=duration,
        metavar="DURATION",
        default=DEFAULTS.quiet_period,
        help="after the minimum duration, release when only idle HTTP connections remain and "
        "no request ran for this long (TCP-proxy connections still count); 0 disables",
    )
    group.add_argument(
        "--poll-interval",
        type=duration,
        default=DEFAULTS.poll_interval,
        metavar="DURATION",
        help=f"admin stats poll interval (at least {MIN_POLL_INTERVAL}s) when the kernel's socket "
        f"table cannot be read; otherwise Envoy is polled every {HEARTBEAT}s and at once when the "
        "kernel shows the connections at the threshold (never over 10 admin calls in a second)",
    )
    group.add_argument(
        "--drain-listeners",
        action="store_true",
        help="also call /drain_listeners?graceful&skip_exit (irreversible; docs/drain.md, "
        '"What closes an idle connection", says why it is off by default)',
    )
    group.add_argument(
        "--health-check-failure-delay",
        type=duration,
        metavar="DURATION",
        default=DEFAULTS.health_check_failure_delay,
        help="at the drain's start, drain the listeners (clients are told to go: HTTP/1.1 "
        "Connection: close, HTTP/2 GOAWAY) and keep Envoy's health check OK this long before "
        "failing it, for load balancers that cut established flows when it fails (irreversible "
        "from the start, like --drain-listeners; counts against --drain-timeout)",
    )
    group.group.add_argument(
        "--ready-file",
        type=FILE_PATH,
        default=None,
        metavar="PATH",
        help="file written when the drain ends; serve's /shutdown also returns when it "
        "appears, and serve clears a stale one at start",
    )


class _PolicyGroup:
    """An argument group whose defaults can be left out (argparse.SUPPRESS)."""

    def __init__(self, group: argparse._ArgumentGroup, defaults: bool) -> None:
        self.group, self.defaults = group, defaults

    def add_argument(self, *names: str, **options: Any) -> None:
        if not self.defaults:
            options["default"] = argparse.SUPPRESS
        self.group.add_argument(*names, **options)


def given_policy(argv: Sequence[str]) -> dict[str, Any]:
    """The policy fields set on this command line (the hook sends these, and only these, to
    the sidecar: the flags it was not given take serve's values)."""
    given = vars(build_parser(policy_defaults=False).parse_args(argv))
    found = {name: given[name] for name in FIELDS if name in given}
    if "ignore_listener" in given:
        found["ignore_listeners"] = list(given["ignore_listener"])
    return found


def build_parser(policy_defaults: bool = True) -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="shutdown-manager",
        description="Drain Envoy gracefully before the kubelet stops it.",
        formatter_class=help_formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the sidecar: /healthz, /shutdown (wait), /metrics, /status, control socket",
        description="The long-running sidecar. Owns the drain: started by the preStop hook "
        "over the control socket, or by SIGTERM. /shutdown only waits for it to end.",
        formatter_class=help_formatter,
    )
    serve.add_argument(
        "--listen",
        type=host_port,
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help="HTTP server for /healthz, /shutdown (waits only), /metrics and /status",
    )
    serve.add_argument(
        "--confirm-deletion",
        action="store_true",
        help="for a native sidecar: GET /shutdown (Envoy's preStop) also starts the drain, once "
        "the Kubernetes API server says this pod (POD_NAME, POD_NAMESPACE, POD_UID from the "
        "downward API) is being deleted, and a sidecar restarted during the pod's deletion "
        "resumes the drain instead of restoring Envoy; needs RBAC get on pods (docs/drain.md, "
        '"Native sidecars")',
    )
    _common(serve)
    _drain_flags(serve, policy_defaults)
    drain = commands.add_parser(
        "drain",
        help="the preStop exec hook: ask serve to drain, stream progress, exit 0/3/4",
        description="Ask the sidecar over the control socket to drain and wait for the end. "
        "Exit 0: drained; 3: deadline passed with connections left; 4: Envoy gone or "
        "unreachable. If the sidecar is unreachable, drain from here and write --ready-file.",
        formatter_class=help_formatter,
    )
    _common(drain)
    _drain_flags(drain, policy_defaults)
    run = commands.add_parser(
        "run",
        help="run Envoy as a child (VMs, systemd, local): SIGTERM drains, SIGHUP hot-restarts",
        description="Start Envoy as a child and serve the same endpoints as serve. SIGTERM/SIGINT: "
        "drain, stop Envoy, exit 0/3/4 like the hook. SIGHUP: hot restart to the next "
        "--restart-epoch with the same base id. Envoy dying on its own: exit with its status.",
        formatter_class=help_formatter,
    )
    run.add_argument(
        "--listen",
        type=host_port,
        default="127.0.0.1:8090",
        metavar="HOST:PORT",
        help="HTTP server for /healthz, /shutdown (waits only), /metrics and /status",
    )
    _common(run)
    _drain_flags(run, policy_defaults)
    run.add_argument(
        "envoy",
        nargs=argparse.REMAINDER,
        metavar="-- ENVOY_COMMAND",
        help="the Envoy command line, after `--` (--restart-epoch and the base id are managed)",
    )
    return parser


def policy_from(args: argparse.Namespace) -> DrainPolicy:
    return DrainPolicy(
        drain_timeout=args.drain_timeout,
        min_drain_duration=args.min_drain_duration,
        exit_at_connections=args.exit_at_connections,
        ignore_listeners=tuple(args.ignore_listener),
        quiet_period=args.quiet_period,
        poll_interval=args.poll_interval,
        drain_listeners=args.drain_listeners,
        health_check_failure_delay=args.health_check_failure_delay,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"shutdown-manager {args.command}"
    given: dict[str, Any] = {}
    try:
        if args.command == "drain":  # the flags not given are serve's, or else the defaults
            given = given_policy(sys.argv[1:] if argv is None else argv)
            policy = with_overrides(DrainPolicy(), given)[0]
        else:
            policy = policy_from(args)
        _check_ready_file(args.ready_file)
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    configure(LOGGER_NAME, args.log_format, args.log_level)
    if args.command in ("serve", "run"):
        return _serve(prog, args, policy)
    return run_hook(
        args.control_socket,
        args.admin_address,
        policy,
        args.ready_file,
        args.admin_timeout,
        given=given,
    )


def _check_ready_file(path: Path | None) -> None:
    """Checked when the command starts, not when the flag is parsed: the manifests' command
    lines are parsed offline too, where the pod's directories do not exist."""
    if path is None:
        return
    if not path.parent.is_dir():
        raise ValueError(f"--ready-file: {path.parent} is not an existing directory")
    if path.is_dir():
        raise ValueError(f"--ready-file: {path} is a directory; name a file in it")


def _serve(prog: str, args: argparse.Namespace, policy: DrainPolicy) -> int:
    import asyncio

    from shutdown_manager.server import ServeConfig, Sidecar, StartupError
    from shutdown_manager.supervisor import EnvoyCommandError, Supervisor

    host, port = args.listen
    config = ServeConfig(
        admin=args.admin_address,
        listen_host=host,
        listen_port=port,
        control_socket=args.control_socket,
        policy=policy,
        ready_file=args.ready_file,
        admin_timeout=args.admin_timeout,
        confirm_deletion=getattr(args, "confirm_deletion", False),
    )
    try:
        if args.command == "serve":
            return asyncio.run(Sidecar(config).serve())
        envoy = args.envoy[1:] if args.envoy[:1] == ["--"] else args.envoy
        return asyncio.run(Supervisor(config, envoy).run())
    except (StartupError, EnvoyCommandError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, StartupError) else 2
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were in place
        print(f"{prog}: interrupted while starting", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
