"""Is this pod being deleted? Asked of the Kubernetes API, never taken from the caller.

With `serve --confirm-deletion`, a request on the pod network (Envoy's preStop httpGet, or
anyone else) may start the drain only once the API server says this very pod (name and, when
POD_UID is given, uid) is going away: it carries a deletionTimestamp, or a DisruptionTarget
condition (the kubelet's own terminations: node-pressure eviction, graceful node shutdown,
which set no deletionTimestamp). Anything else, the API unreachable included, is "no": the
check fails closed, and the sidecar's own preStop hook (control socket) still drains.

A request on the network costs the API server nothing extra: one GET in flight at a time,
and an answer is reused for `interval` seconds, however many requests ask.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from shutdown_manager.kube_api import REQUEST_TIMEOUT, PodIdentity, core_api

INTERVAL = 1.0
"""Seconds an answer is reused: at most one GET of the pod per second, whoever asks."""


@dataclass(frozen=True)
class Verdict:
    deleting: bool
    reason: str
    """Why, in words for the log: `deletionTimestamp 2026-...`, `not being deleted`, an error."""
    error: bool = False


def verdict_of(pod: Any, identity: PodIdentity) -> Verdict:
    """The verdict on a V1Pod read from the API (or None: not found)."""
    if pod is None:
        return Verdict(False, f"pod {identity.namespace}/{identity.name} not found")
    uid = pod.metadata.uid
    if identity.uid is not None and uid != identity.uid:
        return Verdict(False, f"pod {identity.name} has uid {uid}, not this pod's {identity.uid}")
    if pod.metadata.deletion_timestamp is not None:
        return Verdict(True, f"deletionTimestamp {pod.metadata.deletion_timestamp.isoformat()}")
    for condition in (pod.status.conditions if pod.status else None) or []:
        if condition.type == "DisruptionTarget" and condition.status == "True":
            return Verdict(True, f"DisruptionTarget ({condition.reason})")
    return Verdict(False, "not being deleted")


class DeletionCheck:
    def __init__(
        self,
        identity: PodIdentity,
        interval: float = INTERVAL,
        observe: Callable[[Verdict], None] | None = None,
    ) -> None:
        self.identity = identity
        self.interval = interval
        self.asked = 0
        """GETs sent to the API server (for /status and tests)."""
        self.last: Verdict | None = None
        self._observe = observe
        self._api: Any = None
        self._answered_at = 0.0
        self._inflight: asyncio.Future[Verdict] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pod-deletion")

    async def check(self) -> Verdict:
        """The API server's verdict, at most `interval` old; callers at once share one GET."""
        if self.last is not None and time.monotonic() - self._answered_at < self.interval:
            return self.last
        if self._inflight is None:
            self.asked += 1
            loop = asyncio.get_running_loop()
            self._inflight = loop.run_in_executor(self._executor, self._ask)
            self._inflight.add_done_callback(self._answered)
        return await asyncio.shield(self._inflight)

    def _answered(self, inflight: asyncio.Future[Verdict]) -> None:
        self._inflight = None
        if inflight.cancelled():
            return
        self.last, self._answered_at = inflight.result(), time.monotonic()
        if self._observe is not None:
            self._observe(self.last)

    def _ask(self) -> Verdict:
        try:
            if self._api is None:
                self._api = core_api()
            pod = self._api.read_namespaced_pod(
                self.identity.name, self.identity.namespace, _request_timeout=REQUEST_TIMEOUT
            )
        except Exception as exc:  # any failure is "not confirmed"
            status = getattr(exc, "status", None)
            if status == 404:
                return verdict_of(None, self.identity)
            reason = f"HTTP {status}: {getattr(exc, 'reason', '')}" if status else repr(exc)
            return Verdict(False, f"the API server could not say: {reason}", error=True)
        return verdict_of(pod, self.identity)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
