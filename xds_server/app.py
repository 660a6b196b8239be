"""`xds-server serve`: the control plane's process life, in three phases like the sidecar's.

startup() binds gRPC and HTTP; main_loop() turns every change of the manifests into a
snapshot (sources -> model -> translate -> cache) until SIGTERM; shutdown() stops accepting,
gives streams a bounded grace to finish so proxies move to another replica, and exits.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import gc
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from aiohttp import web

from envoy_lifecycle.http import HTTP_SERVER_OPTIONS
from xds_server import collector
from xds_server.certs import pki
from xds_server.certs.directory import DEFAULT_IDENTITY, SERVER, CertDirectory, CertError, Finding
from xds_server.certs.rotation import Rotator, inspect
from xds_server.certs.secret_volume import SecretVolume
from xds_server.certs.server_tls import IdentityCheck, ServerTls
from xds_server.cluster.duties import ClusterDuties, DutiesConfig, secret_rotator
from xds_server.drained import Waiters, wait_drained
from xds_server.metrics import XdsMetrics
from xds_server.model.gateway import GatewaySettings
from xds_server.model.types import Model
from xds_server.pipeline import Pipeline
from xds_server.sources.api import KubernetesSource
from xds_server.sources.backoff import Backoff
from xds_server.sources.directory import DirectorySource
from xds_server.sources.objects import Limits, Loaded
from xds_server.sources.watch import DirectoryWatcher
from xds_server.translate.listeners import EnvoyPorts
from xds_server.xds.cache import Snapshot, SnapshotStore
from xds_server.xds.order import PUSH_ORDER
from xds_server.xds.server import STUCK_AFTER, AggregatedDiscovery

STOP_GRACE = 5.0
"""Seconds streams get to finish on SIGTERM before they are cut (proxies reconnect elsewhere)."""

CERT_CHECK = 60.0
"""Seconds between certificate checks when nothing wakes the checker earlier."""

CONVERGENCE_WAIT = 30.0
"""Seconds after which a change that not every proxy ACKed is no longer measured."""

MAX_MESSAGE = 64 * 2**20
"""Largest gRPC message either way: a 10,000-route config fits many times over."""

GRPC_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Streams are re-balanced across replicas: gRPC adds +-10% jitter to the age itself.
    ("grpc.max_connection_age_ms", 30 * 60_000),
    ("grpc.max_connection_age_grace_ms", 60_000),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]

log = logging.getLogger("xds_server")


@dataclass(frozen=True)
class ServeConfig:
    manifests: Path | None
    """A directory of manifests; None reads the Kubernetes API instead."""
    grpc_host: str
    grpc_port: int
    http_host: str
    http_port: int
    ports: EnvoyPorts
    ingress_class: str | None
    certs_dir: Path | None
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    """The Gateway API part: our controller name, the address pool."""
    rotate: bool = False
    client_identity: str = DEFAULT_IDENTITY
    propagation_delay: float = 2.0
    stuck_stream_timeout: float = STUCK_AFTER
    """Seconds a proxy may leave a response unanswered before its stream is dropped."""
    kubeconfig: Path | None = None
    """With `manifests` None: a kubeconfig file, or None for the pod's service account."""
    limits: Limits = field(default_factory=Limits)
    """Bounds on the work any input may cause."""
    duties: DutiesConfig | None = None
    """With `manifests` None: the leader's Lease, Ingress status and Secret rotation."""


class StartupError(Exception):
    """A problem the operator must fix (port taken, unreadable certificates)."""


class ControlPlane:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.metrics = XdsMetrics()
        self.store = SnapshotStore()
        self.servicer = AggregatedDiscovery(
            self.store, self.metrics, stuck_after=config.stuck_stream_timeout
        )
        self.source: DirectorySource | KubernetesSource = (
            DirectorySource(config.manifests, config.limits)
            if config.manifests is not None
            else KubernetesSource(config.kubeconfig, config.limits)
        )
        self.should_exit = asyncio.Event()
        self.grpc_port = 0
        self.http_port = 0
        self._server: grpc.aio.Server | None = None
        self._streaming: list[asyncio.Task[None]] = []
        """Pushing snapshots to the streams, dropping stuck ones: while gRPC serves."""
        self._runner: web.AppRunner | None = None
        self._serial = 0
        self._drain_waiters = Waiters()
        self.served_model: Model | None = None
        """The model of the snapshot served now."""
        self.pipeline = Pipeline(config.ingress_class, config.ports, config.gateway)
        self.object_status: dict[str, dict[str, object]] = {}
        """The Gateway API objects' status, as of the last change (GET /status)."""
        self.tls: ServerTls | None = None
        self.rotator: Rotator | None = None
        self.duties: ClusterDuties | None = None
        self._reported: dict[str, str] = {}
        self.rejections: dict[str, None] = {}
        self.source_stopped: str | None = None
        """Why the source stopped, until it yields again after its restart."""
        """What the last change rejected, in order (a dict: ordered and deduplicated)."""

    async def serve(self) -> int:
        await self.startup()
        try:
            await self.main_loop()
        finally:
            await self.shutdown()
        return 0

    async def startup(self) -> None:
        if self.config.manifests is not None and not self.config.manifests.is_dir():
            raise StartupError(f"manifests directory {self.config.manifests} does not exist")
        if isinstance(self.source, KubernetesSource):
            self.duties = self._cluster_duties(self.source)
        server = grpc.aio.server(options=GRPC_OPTIONS)
        server.add_generic_rpc_handlers((self.servicer.handler(),))
        address = f"{self.config.grpc_host}:{self.config.grpc_port}"
        try:
            if self.config.certs_dir is None:
                self.grpc_port = server.add_insecure_port(address)
            else:
                self.grpc_port = server.add_secure_port(address, self._credentials())
        except RuntimeError as exc:
            raise StartupError(f"cannot listen on {address}: {exc}") from exc
        await server.start()
        self._server = server
        self._streaming = [
            asyncio.create_task(self.servicer.push_snapshots()),
            asyncio.create_task(self.servicer.drop_stuck()),
        ]
        try:
            await self._start_http()
        except StartupError:
            await server.stop(None)  # a server left to the collector logs a traceback at exit
            self._server = None
            raise
        log.info(
            "xds-server listening: gRPC %s, HTTP %s:%d",
            address,
            self.config.http_host,
            self.http_port,
        )

    async def main_loop(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.should_exit.set)
        tasks = [asyncio.create_task(self._feed())]
        if self.config.certs_dir is not None:
            tasks.append(asyncio.create_task(self._certificates(self.config.certs_dir)))
        if self.duties is not None:
            tasks.append(asyncio.create_task(self.duties.run()))
        await self.should_exit.wait()
        for task in tasks:
            task.cancel()
        # Let them finish their way out (the leader gives its Lease up), within a bound.
        await asyncio.wait(tasks, timeout=STOP_GRACE / 2)

    async def shutdown(self) -> None:
        log.info(
            "stopping: no new streams; open streams get %.0fs to move to another replica",
            STOP_GRACE,
        )
        if self._server is not None:
            await self._server.stop(STOP_GRACE)
        for task in self._streaming:
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        log.info("xds-server stopped")

    def _credentials(self) -> grpc.ServerCredentials:
        """Reloading mTLS credentials; with --rotate, whatever is due is issued first."""
        root = self.config.certs_dir
        assert root is not None
        if self.config.rotate and self.config.manifests is not None:  # in-cluster: the leader
            self.rotator = Rotator(
                CertDirectory(root),
                self.config.propagation_delay,
                on_rotate=lambda store: self.metrics.cert_rotations.labels(store).inc(),
            )
            try:
                for action in self.rotator.step().actions:
                    log.info("certificates: %s", action)
            except (CertError, OSError) as exc:
                raise StartupError(f"--rotate: {exc}") from exc
        self.tls = ServerTls(SecretVolume(root / SERVER), self.metrics)
        try:
            credentials = self.tls.credentials()
        except (pki.InvalidPair, OSError) as exc:
            raise StartupError(str(exc)) from exc
        self.servicer.admit = IdentityCheck(self.config.client_identity, self.metrics).refusal
        return credentials

    async def _certificates(self, root: Path) -> None:
        """Renew what is due (with --rotate), pick up a swapped server pair at once, and
        export every store's expiry, until cancelled."""
        certs = CertDirectory(root)
        watcher = DirectoryWatcher()
        watcher.watch(
            [
                store.path
                for store in certs.stores.values()
                if isinstance(store, SecretVolume) and store.path.is_dir()
            ]
        )
        try:
            while True:
                wake = pki.now() + datetime.timedelta(seconds=CERT_CHECK)
                if self.rotator is not None:
                    try:
                        result = await asyncio.to_thread(self.rotator.step)
                    except (CertError, OSError) as exc:
                        self._report("rotator", "error", f"rotation failed: {exc}")
                    else:
                        for action in result.actions:
                            log.info("certificates: %s", action)
                        wake = min(wake, result.wake or wake)
                if self.tls is not None:
                    self.tls.refresh()
                findings = await asyncio.to_thread(inspect, certs)
                self._export(findings)
                wake = min(
                    [wake, *(f.expires for f in findings if f.expires and f.expires > pki.now())]
                )
                await watcher.changed(max(0.05, (wake - pki.now()).total_seconds()))
        finally:
            watcher.close()

    def _export(self, findings: list[Finding]) -> None:
        for finding in findings:
            if finding.expires is not None:
                self.metrics.cert_expiry.labels(finding.store).set(finding.expires.timestamp())
            if finding.issued is not None:
                self.metrics.cert_issued.labels(finding.store).set(finding.issued.timestamp())
            self.metrics.cert_problem.labels(finding.store).set(int(finding.level != "ok"))
            self._report(finding.store, finding.level, finding.message)

    def _report(self, store: str, level: str, message: str) -> None:
        """Log a store's state when it changes, not on every check."""
        if self._reported.get(store) == message:
            return
        self._reported[store] = message
        if level == "ok":
            log.info("certificate %s: %s", store, message)
        else:
            log.error("certificate %s needs attention: %s", store, message)

    def _cluster_duties(self, source: KubernetesSource) -> ClusterDuties:
        """A kubeconfig that cannot be read, or no service account: say so in one line."""
        duties = dataclasses.replace(
            self.config.duties or DutiesConfig("envoy-lifecycle", "xds-server"),
            gateway_controller=self.config.gateway.controller,
        )
        try:
            api_client = source.client()
            rotator = None
            if duties.rotate:
                kubeconfig = str(self.config.kubeconfig) if self.config.kubeconfig else None
                rotator = secret_rotator(duties.namespace, kubeconfig, duties.propagation_delay)
            return ClusterDuties(api_client, duties, self.metrics, rotator)
        except ImportError as exc:
            raise StartupError(
                "--kubernetes needs the kubernetes client: pip install 'envoy-lifecycle[kube]'"
            ) from exc
        except Exception as exc:
            raise StartupError(f"cannot configure the Kubernetes client: {exc}") from exc

    async def _feed(self) -> None:
        """Every change of the input, until cancelled. It never dies of one bad change: a
        change that cannot be published is logged and counted, the last good config stays.
        A source that stops (a bug, an input nobody foresaw) is reported and started again
        after a backoff; the last good config is served meanwhile."""
        backoff = Backoff()
        while True:
            began = time.monotonic()
            try:
                async for loaded in self.source.watch():
                    self.source_stopped = None
                    await self._apply_logged(loaded)
                raise RuntimeError("it ended")
            except Exception as exc:
                delay = backoff.after(time.monotonic() - began, failed=True)
                self.source_stopped = f"the source stopped ({exc!r:.200}); restarting it"
                self.metrics.source_restarts.inc()
                log.exception("the source stopped; restarting it in %.1fs", delay)
                await asyncio.sleep(delay)

    async def _apply_logged(self, loaded: Loaded) -> None:
        try:
            await self.apply(loaded)
        except Exception:
            self.metrics.publish_failures.inc()
            log.exception("change not published; the last good config stays")

    async def apply(self, loaded: Loaded) -> bool:
        """Build (in a worker thread: a 10,000-path Ingress must not stall the event loop)
        and publish the snapshot for a set of objects; keep the last good one on error."""
        seen = time.monotonic()
        built = await asyncio.to_thread(self.pipeline.build, loaded, self._serial + 1)
        if built.model.gateway is not None:
            self.object_status = dict(built.model.gateway.status)
        if self.duties is not None:
            self.duties.observe(loaded.objects, built.model.served, self.object_status)
        self._report_rejections(loaded.errors + built.model.errors)
        for problem in built.problems:
            log.error("snapshot not published, the last good one stays: %s", problem)
        if built.problems:
            self.metrics.publish_failures.inc()
        news = built.endpoints
        self.metrics.fallback_activations.inc(len(news.fallbacks_started))
        self.metrics.in_fallback.set(news.in_fallback)
        for cluster in news.fallbacks_started:
            log.warning("no ready endpoint left in %s: its terminating ones serve", cluster)
        snapshot = built.snapshot
        if snapshot is None or not self.store.publish(snapshot):
            return False
        if self._serial == 0:
            gc.collect()  # once, before the first freeze: start from a clean heap
        collector.settle()
        self._serial = snapshot.serial
        self.served_model = built.model
        self.metrics.snapshots.inc()
        self.metrics.ready.set(1)
        converged = self._observe_convergence(snapshot, seen, news.triggered)
        asyncio.get_running_loop().create_task(converged)
        return True

    def _report_rejections(self, errors: list[str]) -> None:
        """Each rejection is logged and counted once, when it appears, not on every reload;
        the current list is at /status."""
        current = dict.fromkeys(errors)
        for error in (e for e in current if e not in self.rejections):  # in input order
            self.metrics.rejected.inc()
            log.error("rejected: %s", error)
        self.rejections = current
        self.metrics.rejected_now.set(len(current))

    async def _observe_convergence(
        self, snapshot: Snapshot, seen: float, triggered: list[float]
    ) -> None:
        """Change seen -> every connected proxy has ACKed it (or a newer snapshot came);
        and from each endpoint change's trigger time (wall clock, the API server's) too."""
        answered = self.servicer.answered
        deadline = seen + CONVERGENCE_WAIT
        streams = self.servicer.streams
        pending = collections.deque(streams)
        while self.store.current is snapshot:
            answered.clear()
            # Streams are pushed, and converge, about in the order they connected: drop the
            # converged (or gone) from the front and stop at the first behind, so a wake costs
            # about O(1), not O(proxies); the whole set is checked once the queue is empty.
            while pending and (pending[0] not in streams or pending[0].converged(snapshot)):
                pending.popleft()
            if not pending:
                pending.extend(s for s in streams if not s.converged(snapshot))
            if not pending:
                self.metrics.convergence.observe(time.monotonic() - seen)
                now = time.time()
                for stamp in triggered:
                    self.metrics.endpoint_programming.observe(max(0.0, now - stamp))
                return
            try:  # checked again only when a proxy has answered, not on a timer
                await asyncio.wait_for(answered.wait(), deadline - time.monotonic())
            except TimeoutError:
                return

    async def _start_http(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/status", self._status)
        app.router.add_get("/drained", self._drained)
        # A preStop whose pod is gone stops waiting: its handler is cancelled.
        self._runner = web.AppRunner(app, **HTTP_SERVER_OPTIONS, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.http_host, self.config.http_port)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {self.config.http_host}:{self.config.http_port}: {exc.strerror}"
            ) from exc
        self.http_port = int(self._runner.addresses[0][1])

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    def degraded(self) -> list[str]:
        """What an operator should fix while the last good config keeps being served."""
        problems = [p for p in (self.source_stopped, self.source.problem) if p]
        if self.rejections:
            problems.append(f"{len(self.rejections)} objects rejected (see /status)")
        return problems

    async def _readyz(self, _: web.Request) -> web.Response:
        """Ready once there is a config to serve; a degraded input is reported, not made
        unready: a proxy is better off with the last good config than with none."""
        ready = self.store.current.serial > 0
        self.metrics.source_problem.set(int(bool(self.source_stopped or self.source.problem)))
        body: dict[str, object] = {"ready": ready}
        if ready and self.degraded():
            body["degraded"] = self.degraded()
        return web.json_response(body, status=200 if ready else 503)

    async def _status(self, _: web.Request) -> web.Response:
        """The server's own state, and each Gateway API object's status by
        `Kind/namespace/name` (`Kind/name` when cluster-scoped), as the API would hold it."""
        return web.json_response(
            {
                "serial": self.store.current.serial,
                # Content hashes: replicas over the same input show the same ones.
                "versions": {
                    t.rsplit(".", 1)[-1]: self.store.current.version(t) for t in PUSH_ORDER
                },
                "source_problem": self.source.problem,
                "rejected": list(self.rejections),
                **self.object_status,
            }
        )

    async def _drained(self, request: web.Request) -> web.Response:
        """The exact preStop of an app behind Envoy (drained.py)."""
        return await wait_drained(
            request,
            lambda: self.served_model,
            lambda: (stream.converged(self.store.current) for stream in self.servicer.streams),
            self._drain_waiters,
        )

    async def _metrics(self, _: web.Request) -> web.Response:
        current = self.store.current
        behind = sum(1 for stream in self.servicer.streams if not stream.converged(current))
        self.metrics.proxies_behind.set(behind)
        return web.Response(body=self.metrics.render(), content_type="text/plain")
