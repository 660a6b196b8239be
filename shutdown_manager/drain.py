"""The drain: one policy and one state machine, used by every command.

Sequence: fail Envoy's health check (listeners start closing connections after their next
response), then poll until one of:

* the minimum duration has passed and active connections are at or below the threshold
  (`drained`), or only idle pooled HTTP connections are left and no request has run for the
  quiet period (`quiescent`): both mean nothing in flight is lost;
* the deadline passed (`timed_out`);
* Envoy is gone (`envoy_gone`): nothing left to wait for.

Polls run on a fixed-rate tick aligned so that one lands exactly on the end of the minimum
duration (a pod with no connections is released within one admin round trip of it), and one
lands when a quiet period or the deadline ends. Between ticks the kernel's count of
connections held on Envoy's listener ports is watched every 20 ms; when it reaches the
threshold the admin API is asked at once. So the last connection closing is noticed within
tens of milliseconds, while admin calls stay under ten in any second.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from shutdown_manager.admin import (
    AdminClient,
    AdminError,
    EnvoyUnreachable,
)
from shutdown_manager.logs import get_logger
from shutdown_manager.policy import (
    ADMIN_CALLS_PER_SECOND,
    HEARTBEAT,
    WAKE_INTERVAL,
    DrainPolicy,
)
from shutdown_manager.sockets import (
    KernelConnectionCounter,
    SocketReading,
    read_listener_sockets,
)
from shutdown_manager.stats import (
    STATS_FILTER,
    ConnectionCount,
    ListenerFilter,
    StatsError,
    count_connections,
    parse_stats,
)

PROGRESS_EVERY = 1.0
"""Seconds between progress events when nothing changes (changes are reported at once)."""


class Outcome(enum.StrEnum):
    DRAINED = "drained"
    QUIESCENT = "quiescent"
    TIMED_OUT = "timed_out"
    ENVOY_GONE = "envoy_gone"
    FAILED = "failed"

    @property
    def exit_code(self) -> int:
        return _EXIT_CODES[self]


_EXIT_CODES = {
    Outcome.DRAINED: 0,
    Outcome.QUIESCENT: 0,
    Outcome.TIMED_OUT: 3,
    Outcome.ENVOY_GONE: 4,
    Outcome.FAILED: 1,
}


class Phase(enum.StrEnum):
    IDLE = "idle"
    DRAINING = "draining"
    DONE = "done"


@dataclass(frozen=True)
class Reading:
    """What one poll learned. `connections` is None when nothing could be read."""

    source: str  # "admin", "sockets" or "none"
    connections: int | None
    count: ConnectionCount | None = None
    gone: bool = False
    error: str | None = None


@dataclass(frozen=True)
class DrainEvent:
    """Something an operator should see: streamed to hooks, logged, counted."""

    kind: str  # "started", "progress" or "finished"
    elapsed: float
    message: str
    connections: int | None = None
    outcome: Outcome | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "event": self.kind,
            "elapsed": round(self.elapsed, 3),
            "message": self.message,
            "connections": self.connections,
        }
        if self.outcome is not None:
            body["outcome"] = self.outcome.value
            body["exit_code"] = self.outcome.exit_code
        body.update(self.fields)
        return body


@dataclass(frozen=True)
class DrainReport:
    outcome: Outcome
    duration: float
    connections_left: int | None
    admin_requests: int
    detail: str


Listener = Callable[[DrainEvent], None]


class AdminBudget:
    """At most `limit` admin calls in any one-second window (a sliding window, not a bucket)."""

    def __init__(self, limit: int = ADMIN_CALLS_PER_SECOND) -> None:
        self._recent: collections.deque[float] = collections.deque(maxlen=limit)

    def ready_at(self) -> float:
        """Monotonic time from which one more call fits."""
        if len(self._recent) < (self._recent.maxlen or 0):
            return -math.inf
        return self._recent[0] + 1.0

    def spend(self) -> None:
        self._recent.append(time.monotonic())


class DrainEngine:
    """Runs one drain against one Envoy. Not reusable: a drain happens once per process."""

    def __init__(
        self,
        admin: AdminClient,
        policy: DrainPolicy,
        listeners: list[Listener] | None = None,
        on_listeners_drained: Callable[[], None] | None = None,
    ) -> None:
        self.admin = admin
        self.policy = policy
        self._listeners = listeners or []
        self._on_listeners_drained = on_listeners_drained
        """Told when Envoy's listeners are drained (irreversible: see listeners_mark)."""
        self._filter = ListenerFilter(patterns=policy.ignore_listeners)
        self._ports: set[int] = set()
        self._start = 0.0
        self._quiet_since = 0.0
        self._last_total: int | None = None
        self._last_reported: tuple[float, int | None] = (-math.inf, None)
        self._budget = AdminBudget()
        self._kernel = KernelConnectionCounter()

    def _emit(self, event: DrainEvent) -> None:
        """Every observer hears every event: one that fails (a ready file whose directory
        went away, a full disk) is logged, and keeps neither the others (the hook waiting
        for `finished`) nor the drain from going on."""
        for listener in self._listeners:
            try:
                listener(event)
            except Exception as exc:
                get_logger("drain").error(
                    "a drain observer failed on %r: %s", event.kind, exc or type(exc).__name__
                )

    def _elapsed(self) -> float:
        return time.monotonic() - self._start

    async def run(self) -> DrainReport:
        self._start = time.monotonic()
        self._quiet_since = self._start
        policy = self.policy
        self._emit(
            DrainEvent(
                "started",
                0.0,
                f"drain started: deadline {policy.drain_timeout:g}s, "
                f"minimum {policy.min_drain_duration:g}s, "
                f"release at <= {policy.exit_at_connections} connections",
                fields={"deadline_s": policy.drain_timeout},
            )
        )
        if not await self._trigger():
            return self._finish(Outcome.ENVOY_GONE, None, "Envoy was not running")
        return await self._poll()

    async def _trigger(self) -> bool:
        """Fail the health check (after the health-check failure delay, clients told to go
        meanwhile); return False only when Envoy is certainly not running."""
        delay = self.policy.health_check_failure_delay
        if delay > 0:
            if not await self._step(self._drain_listeners):
                return False
            message = f"listeners draining, clients told to go; health check OK for {delay:g}s"
            self._emit(DrainEvent("progress", self._elapsed(), message))
            await asyncio.sleep(max(0.0, self._start + delay - time.monotonic()))
        if not await self._step(self._fail_health):
            return False
        again = self.policy.drain_listeners and delay <= 0  # else drained already
        if again and not await self._step(self._drain_listeners):
            return False
        await self._learn_listeners()
        return True

    async def _step(self, call: Callable[[], Awaitable[None]]) -> bool:
        """One admin call of the trigger: False when Envoy is certainly not running; any
        other failure is reported and the drain goes on (the deadline still bounds it)."""
        try:
            await call()
        except EnvoyUnreachable:
            return False
        except AdminError as exc:
            self._emit(DrainEvent("progress", self._elapsed(), f"admin trigger failed: {exc}"))
        return True

    async def _fail_health(self) -> None:
        self._budget.spend()
        await self.admin.healthcheck_fail()

    async def _drain_listeners(self) -> None:
        if self._on_listeners_drained is not None:
            self._on_listeners_drained()  # before: a sidecar killed mid-call must still know
        self._budget.spend()
        await self.admin.drain_listeners()

    async def _learn_listeners(self) -> None:
        """Resolve listener names and ports once: for exclusion and for the socket fallback."""
        try:
            self._budget.spend()
            listeners = await self.admin.listeners()
        except AdminError:
            return
        self._filter = ListenerFilter.resolve(self.policy.ignore_listeners, listeners)
        self._ports = {
            item.port
            for item in listeners
            if item.port is not None and not self._filter.ignores_configured(item)
        }

    async def _poll(self) -> DrainReport:
        policy = self.policy
        min_end = self._start + policy.min_drain_duration
        deadline = self._start + policy.drain_timeout
        interval = self._interval()
        # Ticks at min_end - k*interval: one poll lands exactly when the minimum ends.
        tick = self._start + (policy.min_drain_duration % interval)
        try:
            while True:
                reading = await self.read()
                now = time.monotonic()
                self._report(reading, now)
                if reading.gone:
                    return self._finish(Outcome.ENVOY_GONE, None, reading.error or "Envoy exited")
                decided = self._decide(reading, now, min_end)
                if decided is not None:
                    outcome, detail = decided
                    return self._finish(outcome, reading.connections, detail)
                if now >= deadline:
                    return self._finish(Outcome.TIMED_OUT, reading.connections, _late(reading))
                while tick <= now:
                    tick += interval
                await self._until_next_poll(
                    reading, min(tick, deadline, self._quiet_due(reading)), min_end
                )
        finally:
            self._kernel.close()

    def _interval(self) -> float:
        """Slower admin heartbeat when the kernel can wake us early; the flag's rate otherwise."""
        if self._kernel.count(self._ports) is None:
            return self.policy.poll_interval
        return max(self.policy.poll_interval, HEARTBEAT)

    def _quiet_due(self, reading: Reading) -> float:
        """When the quiet period would end, if only idle HTTP connections are left."""
        count = reading.count
        if self.policy.quiet_period <= 0 or count is None:
            return math.inf
        if count.non_http > self.policy.exit_at_connections:
            return math.inf
        return self._quiet_since + self.policy.quiet_period

    async def _until_next_poll(self, reading: Reading, wake: float, min_end: float) -> None:
        """Sleep until `wake`, or less if the kernel shows the count reached the threshold."""
        wake = max(wake, self._budget.ready_at())
        threshold = self.policy.exit_at_connections
        watch = reading.connections is not None and reading.connections > threshold
        while (now := time.monotonic()) < wake:
            await asyncio.sleep(min(WAKE_INTERVAL, wake - now) if watch else wake - now)
            if not watch or time.monotonic() < max(min_end, self._budget.ready_at()):
                continue
            held = self._kernel.count(self._ports)
            if held is None:
                watch = False
            elif held <= threshold:
                return

    def _decide(self, reading: Reading, now: float, min_end: float) -> tuple[Outcome, str] | None:
        if now < min_end or reading.connections is None:
            return None
        threshold = self.policy.exit_at_connections
        if reading.connections <= threshold:
            return Outcome.DRAINED, f"{reading.connections} connections left"
        count = reading.count
        quiet_for = now - self._quiet_since
        if (
            count is not None
            and self.policy.quiet_period > 0
            and count.non_http <= threshold
            and quiet_for >= self.policy.quiet_period
        ):
            return (
                Outcome.QUIESCENT,
                f"{count.total} idle HTTP connections left, no request for {quiet_for:.1f}s",
            )
        return None

    async def read(self) -> Reading:
        """One reading: admin stats first, the kernel's socket table when the admin fails."""
        self._budget.spend()
        try:
            values = parse_stats(await self.admin.stats(STATS_FILTER))
        except EnvoyUnreachable as exc:
            return self._from_sockets(str(exc), unreachable=True)
        except (AdminError, StatsError) as exc:
            return self._from_sockets(str(exc), unreachable=False)
        count = count_connections(values, self._filter)
        self._track_requests(count, time.monotonic())
        return Reading(source="admin", connections=count.total, count=count)

    def _track_requests(self, count: ConnectionCount, now: float) -> None:
        if count.requests_active > 0 or count.requests_total != self._last_total:
            self._quiet_since = now
        self._last_total = count.requests_total

    def _from_sockets(self, error: str, unreachable: bool) -> Reading:
        self._quiet_since = time.monotonic()
        sockets: SocketReading | None = read_listener_sockets(self._ports)
        if sockets is None:
            return Reading(source="none", connections=None, gone=unreachable, error=error)
        if not sockets.listening:
            return Reading(source="sockets", connections=0, gone=True, error=error)
        return Reading(source="sockets", connections=sockets.held, error=error)

    def _report(self, reading: Reading, now: float) -> None:
        last_time, last_value = self._last_reported
        if reading.connections == last_value and now - last_time < PROGRESS_EVERY:
            return
        self._last_reported = (now, reading.connections)
        shown = "?" if reading.connections is None else str(reading.connections)
        fields: dict[str, Any] = {"source": reading.source}
        if reading.count is not None:
            fields["requests_active"] = reading.count.requests_active
            fields["listeners"] = dict(reading.count.listeners)
        if reading.error:
            fields["admin_error"] = reading.error
        self._emit(
            DrainEvent(
                "progress",
                now - self._start,
                f"{shown} active connections ({reading.source})",
                connections=reading.connections,
                fields=fields,
            )
        )

    def fail(self, error: BaseException) -> DrainReport:
        """End the drain on an unexpected error, so waiters are released and it is seen."""
        return self._finish(Outcome.FAILED, None, f"internal error: {error!r}")

    def _finish(
        self,
        outcome: Outcome,
        left: int | None,
        detail: str,
    ) -> DrainReport:
        report = DrainReport(
            outcome=outcome,
            duration=self._elapsed(),
            connections_left=left,
            admin_requests=self.admin.requests,
            detail=detail,
        )
        self._emit(
            DrainEvent(
                "finished",
                report.duration,
                f"drain {outcome.value} after {report.duration:.2f}s: {detail}",
                connections=left,
                outcome=outcome,
                fields={"admin_requests": report.admin_requests},
            )
        )
        return report


def _late(reading: Reading) -> str:
    if reading.connections is None:
        return "deadline passed; connections could not be read"
    return f"deadline passed with {reading.connections} connections left"
