"""One drain per process, whoever asks: hooks, SIGTERM and waiters all join the same one.

The kubelet may run the preStop hook while SIGTERM arrives, a hook may be retried, and many
`/shutdown` requests may wait: none of them may start a second drain or miss the end of
the first. Subscribers get every event from the moment they join, then the final one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from typing import Any

from shutdown_manager.drain import DrainEngine, DrainEvent, DrainReport, Listener, Phase
from shutdown_manager.policy import DrainPolicy

SUBSCRIBER_BUFFER = 256
"""Events kept for a slow subscriber; older progress is dropped, the final event never is."""


class DrainCoordinator:
    def __init__(
        self, make_engine: Callable[[list[Listener], DrainPolicy], DrainEngine], policy: DrainPolicy
    ) -> None:
        self._make_engine = make_engine
        self.policy = policy
        """The policy of the drain once started (serve's until then)."""
        self._task: asyncio.Task[DrainReport] | None = None
        self._finished = asyncio.Event()
        self._subscribers: set[asyncio.Queue[DrainEvent]] = set()
        self.phase = Phase.IDLE
        self.report: DrainReport | None = None
        self.started_at: float | None = None
        self.last_event: DrainEvent | None = None

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def start(self, policy: DrainPolicy | None = None) -> asyncio.Task[DrainReport]:
        """Start the drain (with `policy`, else serve's), or return the one already running
        or finished, whatever policy it runs with."""
        if self._task is None:
            self.phase = Phase.DRAINING
            self.started_at = time.time()
            self.policy = policy or self.policy
            engine = self._make_engine([self._publish], self.policy)
            self._task = asyncio.create_task(self._run(engine), name="drain")
        return self._task

    async def _run(self, engine: DrainEngine) -> DrainReport:
        try:
            self.report = await engine.run()
        except Exception as exc:  # a bug must still release every waiter
            self.report = engine.fail(exc)
        finally:
            self.phase = Phase.DONE
            self._finished.set()
        return self.report

    def _publish(self, event: DrainEvent) -> None:
        self.last_event = event
        for queue in self._subscribers:
            if queue.full() and event.kind != "finished":
                continue
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

    async def wait(self) -> DrainReport | None:
        """Block until the drain has ended (it may not have started yet)."""
        await self._finished.wait()
        return self.report

    async def events(self) -> AsyncIterator[DrainEvent]:
        """Events from now until the drain's final one (at once if it already ended)."""
        if self.finished:
            if self.last_event is not None:
                yield self.last_event
            return
        queue: asyncio.Queue[DrainEvent] = asyncio.Queue(SUBSCRIBER_BUFFER)
        self._subscribers.add(queue)
        try:
            if self.last_event is not None:
                yield self.last_event
            while True:
                event = await queue.get()
                yield event
                if event.kind == "finished":
                    return
        finally:
            self._subscribers.discard(queue)

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "phase": self.phase.value,
            "started_at": self.started_at,
            "policy": asdict(self.policy),
        }
        if self.last_event is not None:
            body["last_event"] = self.last_event.to_dict()
        if self.report is not None:
            body["outcome"] = self.report.outcome.value
            body["duration"] = round(self.report.duration, 3)
            body["connections_left"] = self.report.connections_left
            body["detail"] = self.report.detail
        return body
