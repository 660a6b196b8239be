"""Prometheus metrics of one sidecar, in its own registry (several can live in one test)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from shutdown_manager.drain import DrainEvent, Outcome, Phase

DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 15, 20, 30, 45, 60, 120, 300, 600)


class DrainMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.phase = Gauge(
            "shutdown_manager_drain_phase",
            "1 for the current drain phase (idle, draining, done).",
            ["phase"],
            registry=self.registry,
        )
        self.connections = Gauge(
            "shutdown_manager_envoy_active_connections",
            "Downstream connections on Envoy's serving listeners at the last poll.",
            registry=self.registry,
        )
        self.duration = Histogram(
            "shutdown_manager_drain_duration_seconds",
            "From drain trigger to release.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.outcomes = Counter(
            "shutdown_manager_drains",
            "Finished drains by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.restored = Counter(
            "shutdown_manager_envoy_restored",
            "Times a (re)started sidecar found Envoy DRAINING and restored its health check.",
            registry=self.registry,
        )
        self.listeners_drained = Gauge(
            "shutdown_manager_envoy_listeners_drained",
            "1 when Envoy's listeners are drained (irreversible until Envoy restarts): by this"
            " drain, or found at start.",
            registry=self.registry,
        )
        self.deletion_checks = Counter(
            "shutdown_manager_deletion_checks",
            "Answers of the API server on whether this pod is being deleted (--confirm-deletion)"
            ", by verdict: deleting, not_deleting, error.",
            ["verdict"],
            registry=self.registry,
        )
        self.deadline = Gauge(
            "shutdown_manager_drain_deadline_seconds",
            "The deadline of the drain running or last run (0 before any).",
            registry=self.registry,
        )
        self.started = Gauge(
            "shutdown_manager_drain_started_timestamp_seconds",
            "When the drain running or last run started, Unix time (0 before any): with the"
            " deadline, how late a drain is.",
            registry=self.registry,
        )
        for outcome in Outcome:
            self.outcomes.labels(outcome.value)
        for verdict in ("deleting", "not_deleting", "error"):
            self.deletion_checks.labels(verdict)
        self.set_phase(Phase.IDLE)

    def set_phase(self, current: Phase) -> None:
        for phase in Phase:
            self.phase.labels(phase.value).set(1 if phase is current else 0)

    def observe(self, event: DrainEvent) -> None:
        if event.connections is not None:
            self.connections.set(event.connections)
        if event.kind == "started":
            self.set_phase(Phase.DRAINING)
            self.started.set(time.time())
            self.deadline.set(float(event.fields.get("deadline_s", 0)))
        elif event.kind == "finished" and event.outcome is not None:
            self.set_phase(Phase.DONE)
            self.duration.observe(event.elapsed)
            self.outcomes.labels(event.outcome.value).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
