"""What one replica does for the whole cluster, only while it holds the leader Lease:
write the Ingress and Gateway API status, and (with --rotate) keep the certificate Secrets
renewed.

Every replica serves xDS the same way; these writes must have one author. The leader runs
the status pass after every change of the objects and whenever it becomes leader, and the
rotator whenever something is due (the state lives in the Secrets, so a new leader carries
on where the old one stopped).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from dataclasses import dataclass, field

from xds_server.certs import pki
from xds_server.certs.directory import CertDirectory, CertError
from xds_server.certs.rotation import Rotator
from xds_server.cluster import gateway_status, ingress_status
from xds_server.cluster.leader import LeaseElector
from xds_server.metrics import XdsMetrics
from xds_server.sources.objects import KubeObject

ROTATION_CHECK = 60.0
"""Seconds between rotator steps when nothing is due sooner."""

log = logging.getLogger("xds_server.cluster")


@dataclass(frozen=True)
class DutiesConfig:
    namespace: str
    identity: str
    envoy_service: str = "envoy"
    status_addresses: list[str] = field(default_factory=list)
    rotate: bool = False
    propagation_delay: float = 90.0
    gateway_controller: str = "envoy-lifecycle.io/gateway-controller"


class ClusterDuties:
    def __init__(
        self,
        api_client: object,
        config: DutiesConfig,
        metrics: XdsMetrics,
        rotator: Rotator | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.elector = LeaseElector(api_client, config.namespace, "xds-server", config.identity)
        self.writer = ingress_status.StatusWriter(api_client)
        self.gateway_writer = gateway_status.GatewayStatusWriter(api_client)
        self._gateway_status: dict[str, gateway_status.Status] = {}
        self.rotator = rotator
        self._objects: list[KubeObject] = []
        self._served: set[tuple[str, str]] = set()
        self._dirty = asyncio.Event()

    def observe(
        self,
        objects: list[KubeObject],
        served: set[tuple[str, str]],
        statuses: dict[str, gateway_status.Status] | None = None,
    ) -> None:
        """The objects just loaded, the Ingresses this server serves among them, and the
        Gateway API objects' status as the model sees it."""
        self._objects, self._served = objects, served
        self._gateway_status = statuses or {}
        self._dirty.set()

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self.elector.run()),
            asyncio.create_task(self._status_loop()),
        ]
        if self.rotator is not None:
            tasks.append(asyncio.create_task(self._rotation_loop(self.rotator)))
        try:
            await asyncio.gather(*tasks)
        finally:
            # A cancelled gather returns at its first cancelled child, the elector maybe still
            # releasing the Lease: cancelling it again would drop the release. Only what is
            # not stopping yet is cancelled; all are awaited.
            for task in tasks:
                if not task.done() and not task.cancelling():
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _status_loop(self) -> None:
        while True:
            await self.elector.leading.wait()
            self.metrics.leader.set(1)
            wanted = ingress_status.addresses(
                self._objects,
                (self.config.namespace, self.config.envoy_service),
                self.config.status_addresses,
            )
            stale = ingress_status.stale(self._objects, self._served, wanted)
            if wanted and stale:
                written = await asyncio.to_thread(self.writer.write, stale, wanted)
                self.metrics.status_writes.inc(written)
            changed = gateway_status.pending(
                self._objects,
                self._gateway_status,
                self.config.gateway_controller,
                gateway_status.now(),
            )
            if changed:
                written = await asyncio.to_thread(self.gateway_writer.write, changed)
                self.metrics.status_writes.inc(written)
            self._dirty.clear()
            await self._next_change()

    async def _next_change(self) -> None:
        """Until the objects change or leadership is lost and won again."""
        lost = asyncio.create_task(self._lost())
        changed = asyncio.create_task(self._dirty.wait())
        await asyncio.wait({lost, changed}, return_when=asyncio.FIRST_COMPLETED)
        for task in (lost, changed):
            task.cancel()

    async def _lost(self) -> None:
        await self.elector.following.wait()
        self.metrics.leader.set(0)

    async def _rotation_loop(self, rotator: Rotator) -> None:
        while True:
            await self.elector.leading.wait()
            wake = pki.now() + datetime.timedelta(seconds=ROTATION_CHECK)
            try:
                result = await asyncio.to_thread(rotator.step)
            except (CertError, OSError) as exc:
                log.error("certificate rotation failed: %s", exc)
            except Exception as exc:  # the API refused (a conflict with another writer)
                log.warning("certificate rotation deferred: %s", str(exc).splitlines()[0])
            else:
                for action in result.actions:
                    log.info("certificates: %s", action)
                wake = min(wake, result.wake or wake)
            await asyncio.sleep(max(1.0, (wake - pki.now()).total_seconds()))


def secret_rotator(namespace: str, kubeconfig: str | None, delay: float) -> Rotator:
    """A rotator over the certificate Secrets of `namespace`."""
    from xds_server.certs.secret_api import secret_stores

    return Rotator(CertDirectory(None, dict(secret_stores(namespace, kubeconfig))), delay)
