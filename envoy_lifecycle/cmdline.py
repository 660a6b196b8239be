"""What every command line of ours shares: one-line usage errors, the help layout the
generated reference depends on, and the argument types (durations, HOST:PORT, ports, the
logging flags). Standard library only: the preStop hook parses its flags with it before
anything heavy is imported.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from typing import NoReturn

HELP_WIDTH = 100
"""Fixed help width, so the reference generated from it is the same everywhere."""

_DURATION = re.compile(r"^(?P<value>\d+(\.\d+)?)(?P<unit>ms|s|m|h|d)?$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage mistake in one line (the kubelet shows only one)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def help_formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.ArgumentDefaultsHelpFormatter(prog, width=HELP_WIDTH, max_help_position=34)


def duration(text: str) -> float:
    """Seconds from `25`, `25s`, `500ms`, `5m`, `1h` or `7d`."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 25s, 500ms, 5m)")
    return float(match["value"]) * _UNIT[match["unit"]]


_GO_UNIT = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0,
            "m": 60.0, "h": 3600.0}  # fmt: skip
_GO_PART = re.compile(r"(\d*)(?:\.(\d*))?([^\d.]*)")


def go_duration(text: str) -> float:
    """Seconds from Go's duration syntax (time.ParseDuration, what cobra's flags take):
    `60s`, `1m30s`, `1.5h`, `300ms`, `0`; every number needs its unit, a sign is allowed."""
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0.0
    total, rest = 0.0, body
    if not rest:
        raise argparse.ArgumentTypeError(f"invalid Go duration {text!r} (try 60s, 1m30s, 500ms)")
    while rest:
        match = _GO_PART.match(rest)
        whole, fraction, unit = match.groups() if match else ("", None, "")
        if not whole and not fraction:
            raise argparse.ArgumentTypeError(
                f"invalid Go duration {text!r} (try 60s, 1m30s, 500ms)"
            )
        if not unit:
            raise argparse.ArgumentTypeError(f"missing unit in Go duration {text!r} (try 60s)")
        if unit not in _GO_UNIT:
            raise argparse.ArgumentTypeError(
                f"unknown unit {unit!r} in Go duration {text!r} (ns, us, ms, s, m, h)"
            )
        total += float(f"{whole or 0}.{fraction or 0}") * _GO_UNIT[unit]
        rest = rest[match.end() if match else len(rest) :]
    return -total if text.startswith("-") else total


def host_port(text: str) -> tuple[str, int]:
    match = re.match(r"^(\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})$", text)
    port = int(match["port"]) if match else -1
    if not match or not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (or [IPv6]:PORT), got {text!r}")
    return (match["v6"] or match["host"] or "0.0.0.0", port)


def port(text: str) -> int:
    """A TCP port to listen on or connect to: 1-65535."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"expected a port 1-65535, got {text!r}")
    return value


def ip_address(text: str) -> str:
    """An IPv4 or IPv6 address, written the canonical way."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an IP address, got {text!r}") from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


_SIZE = re.compile(r"^(?P<value>\d+)(?P<unit>B|KiB|MiB|GiB)?$")
_SIZE_UNIT = {None: 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def size(text: str) -> int:
    """Bytes from `1048576`, `512KiB`, `16MiB` or `1GiB`."""
    match = _SIZE.match(text.strip())
    if not match or int(match["value"]) == 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 16MiB, 512KiB)")
    return int(match["value"]) * _SIZE_UNIT[match["unit"]]


def add_logging_flags(parser: argparse.ArgumentParser) -> None:
    """--log-format and --log-level, the same for every long-running command."""
    parser.add_argument(
        "--log-format", choices=["text", "json"], default="text", help="log line format"
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="least severe level logged",
    )
