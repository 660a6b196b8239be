"""The drain policy: the operator's knobs, validated (stdlib only, so the hook starts fast)."""

from __future__ import annotations

from dataclasses import dataclass

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

    def __post_init__(self) -> None:
        if self.drain_timeout <= 0:
            raise ValueError("--drain-timeout must be positive")
        if not 0 <= self.min_drain_duration <= self.drain_timeout:
            raise ValueError("--min-drain-duration must be between 0 and --drain-timeout")
        if self.exit_at_connections < 0:
            raise ValueError("--exit-at-connections must not be negative")
        if self.quiet_period < 0:
            raise ValueError("--quiet-period must not be negative")
        if self.poll_interval < MIN_POLL_INTERVAL:
            raise ValueError(f"--poll-interval must be at least {MIN_POLL_INTERVAL}s")
