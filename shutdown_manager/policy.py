"""The drain policy: the operator's knobs, validated (stdlib only, so the hook starts fast)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MIN_POLL_INTERVAL = 0.1
"""The fastest admin polling allowed by flag."""

ADMIN_CALLS_PER_SECOND = 10
"""Hard cap on admin requests in any one-second window, early polls included."""

HEARTBEAT = 0.25
"""Admin poll interval while the kernel wake-up works: it catches the end sooner anyway."""

WAKE_INTERVAL = 0.02
"""Seconds between looks at the kernel's count of held connections between admin polls."""


@dataclass(frozen=True)
class DrainPolicy:
    """Defaults fit a pod with Kubernetes' default 30 s grace period (docs/drain.md: 300 s)."""

    drain_timeout: float = 25.0
    min_drain_duration: float = 5.0
    exit_at_connections: int = 0
    ignore_listeners: tuple[str, ...] = ()
    quiet_period: float = 1.0
    poll_interval: float = MIN_POLL_INTERVAL
    drain_listeners: bool = False
    health_check_failure_delay: float = 0.0
    """Seconds the health check stays OK after the drain starts, while clients are told to
    go (listeners drained gracefully): for load balancers that cut flows when it fails."""

    def __post_init__(self) -> None:
        if self.drain_timeout <= 0:
            raise ValueError("--drain-timeout must be positive")
        if not 0 <= self.min_drain_duration <= self.drain_timeout:
            raise ValueError("--min-drain-duration must be between 0 and --drain-timeout")
        if self.exit_at_connections < 0:
            raise ValueError("--exit-at-connections must not be negative")
        if self.quiet_period < 0:
            raise ValueError("--quiet-period must not be negative")
        if not 0 <= self.health_check_failure_delay <= self.drain_timeout:
            raise ValueError("--health-check-failure-delay must be between 0 and --drain-timeout")
        if self.poll_interval < MIN_POLL_INTERVAL:
            raise ValueError(f"--poll-interval must be at least {MIN_POLL_INTERVAL}s")


FIELDS = (
    "drain_timeout",
    "min_drain_duration",
    "exit_at_connections",
    "ignore_listeners",
    "quiet_period",
    "poll_interval",
    "drain_listeners",
    "health_check_failure_delay",
)
"""What a hook may set for the drain it starts (sent over the control socket)."""


def with_overrides(base: DrainPolicy, given: dict[str, Any]) -> tuple[DrainPolicy, list[str]]:
    """`base` (serve's flags) with the fields a hook gave; notes on what had to be adjusted.
    Raises ValueError on an unknown field or a value the flag would refuse."""
    unknown = set(given) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown drain policy fields: {', '.join(sorted(unknown))}")
    for name, value in given.items():
        if not _TYPES[name](value):
            raise ValueError(f"{flag(name)}: {value!r} is not a valid value")
    values = {**{name: getattr(base, name) for name in FIELDS}, **given}
    values["ignore_listeners"] = tuple(values["ignore_listeners"])
    notes = []
    if "min_drain_duration" not in given and values["min_drain_duration"] > values["drain_timeout"]:
        notes.append(
            f"serve's --min-drain-duration {values['min_drain_duration']:g}s is cut to the"
            f" hook's --drain-timeout {values['drain_timeout']:g}s"
        )
        values["min_drain_duration"] = values["drain_timeout"]
    return DrainPolicy(**values), notes


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_TYPES: dict[str, Callable[[Any], bool]] = {
    "drain_timeout": _number,
    "min_drain_duration": _number,
    "exit_at_connections": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "ignore_listeners": lambda v: (
        isinstance(v, list | tuple) and all(isinstance(i, str) for i in v)
    ),
    "quiet_period": _number,
    "poll_interval": _number,
    "drain_listeners": lambda v: isinstance(v, bool),
    "health_check_failure_delay": _number,
}


def differences(running: DrainPolicy, asked: DrainPolicy) -> list[str]:
    """`--flag running (asked here)` for each field on which two policies differ."""
    found = []
    for name in FIELDS:
        ours, theirs = getattr(running, name), getattr(asked, name)
        if ours != theirs:
            found.append(f"{flag(name)} {_shown(ours)} (asked: {_shown(theirs)})")
    return found


def describe(policy: DrainPolicy) -> str:
    """The policy as the flags that set it."""
    return " ".join(f"{flag(name)} {_shown(getattr(policy, name))}" for name in FIELDS)


def flag(name: str) -> str:
    """The command-line flag of a policy field."""
    return "--ignore-listener" if name == "ignore_listeners" else "--" + name.replace("_", "-")


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}s"
    if isinstance(value, tuple):
        return ",".join(value) or "none"
    return str(value).lower()
