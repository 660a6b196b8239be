"""Kubernetes events for the drain (DrainStarted, DrainCompleted, DrainTimedOut).

Best-effort: a hook's own output never reaches `kubectl`, so events are how an operator sees
a drain from outside the pod. They are posted from a worker thread with a short timeout and
never delay the drain. The kubernetes client is imported only when POD_NAME and
POD_NAMESPACE are set, so an idle sidecar outside that setting does not carry it in memory.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shutdown_manager.drain import DrainEvent, Outcome
from shutdown_manager.kube_api import REQUEST_TIMEOUT, PodIdentity, core_api
from shutdown_manager.logs import get_logger

_REASONS = {
    Outcome.DRAINED: ("DrainCompleted", "Normal"),
    Outcome.QUIESCENT: ("DrainCompleted", "Normal"),
    Outcome.TIMED_OUT: ("DrainTimedOut", "Warning"),
    Outcome.ENVOY_GONE: ("DrainCompleted", "Warning"),
    Outcome.FAILED: ("DrainFailed", "Warning"),
}

log = get_logger("events")


class KubeEvents:
    """Posts drain events about this pod; does nothing when not in a pod or not allowed."""

    def __init__(self, identity: PodIdentity | None = None) -> None:
        self.pod = identity.name if identity else None
        self.namespace = identity.namespace if identity else None
        self._api: Any = None
        self._disabled = identity is None
        self._pending: set[asyncio.Future[None]] = set()
        # One worker: events land in order, and a hung API server holds one thread only.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kube-events")

    @property
    def enabled(self) -> bool:
        return not self._disabled

    def observe(self, event: DrainEvent) -> None:
        if self._disabled or event.kind == "progress":
            return
        if event.kind == "started":
            reason, kind = "DrainStarted", "Normal"
        else:
            assert event.outcome is not None
            reason, kind = _REASONS[event.outcome]
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._post, reason, kind, event.message)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    async def flush(self, timeout: float = REQUEST_TIMEOUT) -> None:
        """Give events in flight a short chance to land before the process exits."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)

    def _client(self) -> Any:
        if self._api is None:
            self._api = core_api()
        return self._api

    def _post(self, reason: str, kind: str, message: str) -> None:
        try:
            api = self._client()
            from kubernetes import client

            now = datetime.datetime.now(datetime.UTC)
            body = client.CoreV1Event(
                metadata=client.V1ObjectMeta(
                    generate_name=f"{self.pod}.", namespace=self.namespace
                ),
                involved_object=client.V1ObjectReference(
                    kind="Pod", name=self.pod, namespace=self.namespace
                ),
                reason=reason,
                message=message[:1000],
                type=kind,
                source=client.V1EventSource(
                    component="shutdown-manager", host=socket.gethostname()
                ),
                first_timestamp=now,
                last_timestamp=now,
                count=1,
            )
            api.create_namespaced_event(self.namespace, body, _request_timeout=REQUEST_TIMEOUT)
        except Exception as exc:  # best-effort by design: never let events hurt the drain
            log.warning("could not post Kubernetes event %s: %s", reason, exc)
            self._disabled = True
