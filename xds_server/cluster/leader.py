"""One writer among the replicas: a `coordination.k8s.io/v1` Lease.

Every replica serves xDS; only the lease holder writes (Ingress status, certificate
rotation). The holder renews every third of the lease duration; another replica takes the
lease once it has not been renewed for a whole duration. Every write carries the
resourceVersion it read, so two replicas racing for an expired lease cannot both win (the
loser gets 409 Conflict). On SIGTERM the holder gives the lease up, so the other replica
takes over at its next try instead of after the duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from typing import Any

from xds_server.kube_api import REQUEST_TIMEOUT, read_json

LEASE_SECONDS = 15
RENEW_SECONDS = LEASE_SECONDS / 3

log = logging.getLogger("xds_server.leader")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _micro(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    return datetime.datetime.strptime(text.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z")


class LeaseElector:
    def __init__(self, api_client: Any, namespace: str, name: str, identity: str) -> None:
        from kubernetes import client

        self.api: Any = client.CoordinationV1Api(api_client)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.leading = asyncio.Event()
        self.following = asyncio.Event()
        """Set while another replica (or nobody) holds the lease."""
        self.following.set()

    @property
    def is_leader(self) -> bool:
        return self.leading.is_set()

    async def run(self) -> None:
        """Try to hold the lease until cancelled; give it up on the way out."""
        try:
            while True:
                try:
                    held = await self._attempt()
                except Exception as exc:  # the API is unreachable: not the leader any more
                    log.warning("lease %s: %s", self.name, str(exc).splitlines()[0][:200])
                    held = False
                self._set(held)
                await asyncio.sleep(RENEW_SECONDS)
        finally:
            if self.is_leader:
                # Shielded: a second cancellation must not drop the release before it is
                # sent (the other replica would wait the whole lease out).
                await asyncio.shield(asyncio.to_thread(self.release))
            self.leading.clear()  # given up, not lost: nothing to warn about
            self.following.set()

    async def _attempt(self) -> bool:
        """One acquire-or-renew. Cancelled mid-way, it still waits for the request in flight:
        a renewal landing after `release` would hold the lease for a replica that is gone,
        and the others would wait the lease out."""
        attempt = asyncio.ensure_future(asyncio.to_thread(self.try_hold))
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await attempt
            raise

    def _set(self, held: bool) -> None:
        if held and not self.is_leader:
            log.info("lease %s/%s acquired by %s", self.namespace, self.name, self.identity)
            self.following.clear()
            self.leading.set()
        elif not held and self.is_leader:
            log.warning("lease %s/%s lost by %s", self.namespace, self.name, self.identity)
            self.leading.clear()
            self.following.set()

    def try_hold(self) -> bool:
        """Acquire or renew the lease; True while we hold it."""
        from kubernetes.client.exceptions import ApiException

        now = _now()
        lease = self._read()
        try:
            return self._claim(lease, now)
        except ApiException as exc:
            if exc.status == 409:
                return False  # another replica wrote first
            raise

    def _claim(self, lease: dict[str, Any] | None, now: datetime.datetime) -> bool:
        if lease is None:
            return self._write(None, self._spec(now, now, 0))
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        renewed = _parse(spec.get("renewTime"))
        duration = float(spec.get("leaseDurationSeconds") or LEASE_SECONDS)
        expired = renewed is None or (now - renewed).total_seconds() > duration
        if holder != self.identity and holder and not expired:
            return False
        acquired = _parse(spec.get("acquireTime")) if holder == self.identity else now
        transitions = int(spec.get("leaseTransitions") or 0) + (holder != self.identity)
        return self._write(lease, self._spec(acquired or now, now, transitions))

    def release(self) -> None:
        """Give the lease up (holder cleared) so another replica need not wait it out."""
        try:
            lease = self._read()
            holder = (lease or {}).get("spec", {}).get("holderIdentity")
            if lease is not None and holder == self.identity:
                spec = dict(lease["spec"])
                spec["holderIdentity"] = None
                self._write(lease, spec)
                log.info("lease %s/%s released", self.namespace, self.name)
        except Exception as exc:  # best effort: the lease expires by itself anyway
            log.warning("lease %s: release failed: %s", self.name, exc)

    def _spec(
        self, acquired: datetime.datetime, renewed: datetime.datetime, transitions: int
    ) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": LEASE_SECONDS,
            "acquireTime": _micro(acquired),
            "renewTime": _micro(renewed),
            "leaseTransitions": transitions,
        }

    def _read(self) -> dict[str, Any] | None:
        return read_json(self.api.read_namespaced_lease, self.name, self.namespace)

    def _write(self, lease: dict[str, Any] | None, spec: dict[str, Any]) -> bool:
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec,
        }
        if lease is None:
            self.api.create_namespaced_lease(
                self.namespace, body, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
            )
        else:
            body["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
            self.api.replace_namespaced_lease(
                self.name,
                self.namespace,
                body,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        return spec.get("holderIdentity") == self.identity
