"""The sidecar (`shutdown-manager serve`): the single source of truth for the drain.

HTTP on `--listen` (reachable from the pod network, so on its own it can only *wait*):
  GET /healthz, GET /shutdown (blocks until the drain has ended), GET /metrics, GET /status.
  With --confirm-deletion (native sidecars), GET /shutdown also starts the drain once the
  Kubernetes API server confirms that this pod is being deleted (pod_deletion.py).
Control socket (a unix socket only this container user can open, mode 0600):
  POST /drain starts the drain or joins the one running, streaming progress as JSON lines.

Its life reads as three phases: `startup()` binds both servers, clears a stale ready marker
and restores an Envoy a previous incarnation left DRAINING; `main_loop()` waits for SIGTERM
(a second signal forces exit); `shutdown()` drains if nobody has yet, lets every waiter get
its answer, then stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import stat
import time
from collections.abc import Awaitable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from envoy_lifecycle.http import HTTP_SERVER_OPTIONS
from shutdown_manager.address import AdminAddress
from shutdown_manager.admin import AdminClient, AdminError, EnvoyUnreachable
from shutdown_manager.coordinator import DrainCoordinator
from shutdown_manager.drain import DrainEngine, DrainReport, Listener
from shutdown_manager.hook_mark import HookMark
from shutdown_manager.hook_mark import mark_path as hook_mark_path
from shutdown_manager.kube_api import PodIdentity
from shutdown_manager.kube_events import KubeEvents
from shutdown_manager.listeners_mark import ListenersMark, mark_path
from shutdown_manager.logs import get_logger, log_event
from shutdown_manager.metrics import DrainMetrics
from shutdown_manager.pod_deletion import DeletionCheck, Verdict
from shutdown_manager.policy import DrainPolicy, describe, differences, with_overrides
from shutdown_manager.readiness import ReadyFile

RESTORE_RETRY = 1.0
"""Seconds between attempts to reach an Envoy that is still starting, at sidecar start."""

RESTORE_GIVE_UP = 120.0
"""Stop looking for a DRAINING Envoy to restore after this long: it was never there."""

API_PATIENCE = 30.0
"""With --confirm-deletion, a restarted sidecar that finds Envoy DRAINING waits this long for
the API server to say whether the pod is being deleted, then restores Envoy anyway: a pod
left DRAINING for an API outage is worse than a deleted pod briefly LIVE again (its
endpoints are already terminating)."""

log = get_logger("serve")


@dataclass(frozen=True)
class ServeConfig:
    admin: AdminAddress
    listen_host: str
    listen_port: int
    control_socket: Path
    policy: DrainPolicy
    ready_file: Path | None = None
    admin_timeout: float = 1.0
    confirm_deletion: bool = False
    wait_paths: tuple[str, ...] = ("/shutdown",)
    """Where Envoy's preStop httpGet waits for the drain (Envoy Gateway's pods call
    /shutdown/ready)."""
    wait_timeout: float | None = None
    """A waiter still waiting this long gets a 500 (Envoy Gateway's --ready-timeout)."""


class StartupError(Exception):
    """A problem the operator must fix (port taken, socket directory missing)."""


class Sidecar:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.admin = AdminClient(config.admin, timeout=config.admin_timeout)
        self.metrics = DrainMetrics()
        identity = PodIdentity.from_env()
        self.events = KubeEvents(identity)
        self.deletion: DeletionCheck | None = None
        if config.confirm_deletion:
            if identity is None:
                raise StartupError(
                    "--confirm-deletion needs POD_NAME and POD_NAMESPACE (downward API)"
                )
            self.deletion = DeletionCheck(identity, observe=self._deletion_verdict)
        self._verdict_logged: str | None = None
        self.ready = ReadyFile(config.ready_file)
        self.listeners_mark = ListenersMark(mark_path(config.control_socket))
        self.hook_mark = HookMark(hook_mark_path(config.control_socket))
        self.listeners_drained = False
        """Envoy's listeners are drained (by this drain, or before this sidecar started)."""
        self.drain = DrainCoordinator(self._engine, config.policy)
        self.should_exit = asyncio.Event()
        self.force_exit = False
        self._runners: list[web.AppRunner] = []
        self._restore: asyncio.Task[None] | None = None
        self.http_port: int | None = None
        self._waiting_on_drain: set[asyncio.Task[Any]] = set()
        """Requests that wait for the drain (hook streams, /shutdown): a forced exit ends them."""
        self.shutdown_waiters = 0
        """/shutdown requests waiting now (Envoy's preStop; their asks stop when they leave)."""

    def _engine(self, listeners: list[Listener], policy: DrainPolicy) -> DrainEngine:
        observers: list[Listener] = [
            log_event,
            self.metrics.observe,
            self.events.observe,
            self.ready.observe,
        ]
        return DrainEngine(self.admin, policy, observers + listeners, self._listeners_drained)

    def _listeners_drained(self) -> None:
        self.listeners_mark.record()
        self.listeners_drained = True
        self.metrics.listeners_drained.set(1)

    def start_drain(self, why: str, policy: DrainPolicy | None = None) -> list[str]:
        """Start the drain with `policy` (serve's if None), or join the one running; what
        the caller should be told (a running drain's policy differs from the one asked)."""
        asked = policy or self.config.policy
        if self.drain.started_at is None:
            fields = {"trigger": why, "policy": asdict(asked)}
            log.info("drain requested by %s", why, extra={"fields": fields})
            if self._restore is not None:
                self._restore.cancel()
            self.drain.start(asked)
            return []
        self.drain.start()
        differ = differences(self.drain.policy, asked) if policy is not None else []
        if not differ:
            return []
        note = f"{why} joined the drain already running, with its policy: " + "; ".join(differ)
        log.warning("%s", note, extra={"fields": {"trigger": why}})
        return [note]

    # -- phases ---------------------------------------------------------------

    async def serve(self) -> int:
        await self.startup()
        try:
            await self.main_loop()
        finally:
            await self.shutdown()
        return 0

    async def startup(self, restore: bool = True) -> None:
        self.ready.clear()
        await self._start_http()
        await self._start_control()
        if restore:
            self._restore = asyncio.create_task(self._restore_envoy(), name="restore")
        log.info(
            "shutdown-manager ready",
            extra={
                "fields": {
                    "admin": str(self.config.admin),
                    "listen": f"{self.config.listen_host}:{self.http_port}",
                    "control_socket": str(self.config.control_socket),
                }
            },
        )

    async def main_loop(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        # A terminal closing, or a habit from other daemons: SIGHUP would otherwise end the
        # process on the spot, its control socket left behind. `serve` has nothing to reload.
        loop.add_signal_handler(
            signal.SIGHUP, log.info, "SIGHUP ignored: serve has nothing to reload"
        )
        await self.should_exit.wait()

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.should_exit.is_set():
            log.warning("second %s: exiting without waiting for the drain", sig.name)
            self.force_exit = True
            return
        self.should_exit.set()

    async def shutdown(self) -> None:
        await self.drain_before_exit()
        await self.close()

    async def drain_before_exit(self) -> DrainReport | None:
        """Run (or join) the drain unless a second signal forced exit."""
        if self.force_exit:
            return None
        if self.drain.started_at is None and self.ready.present:
            log.info("SIGTERM after the hook drained Envoy by itself (the ready file is there):"
                     " not draining again")  # fmt: skip
            return None
        if self.drain.started_at is None:
            log.info("SIGTERM with no drain requested: draining before exit")
        else:
            log.info("SIGTERM during the drain: waiting for it to end")
        self.start_drain("SIGTERM")
        await self._wait_unless_forced(self.drain.wait())
        log.info("drain ended: letting waiters receive their answer")
        return self.drain.report

    async def close(self) -> None:
        """Stop both servers (in-flight answers are still sent) and release resources."""
        if self._restore is not None:
            self._restore.cancel()
        if self.force_exit:  # their connections close: a hook then drains on by itself
            for task in self._waiting_on_drain:
                task.cancel()
        for runner in reversed(self._runners):
            await runner.cleanup()
        if self.deletion is not None:
            self.deletion.close()
        with contextlib.suppress(FileNotFoundError):
            self.config.control_socket.unlink()
        await self.events.flush()
        await self.admin.aclose()
        log.info("shutdown-manager stopped")

    async def _wait_unless_forced(self, waiter: Awaitable[object]) -> None:
        task = asyncio.ensure_future(waiter)
        while not task.done():
            await asyncio.wait({task}, timeout=0.1)
            if self.force_exit:
                task.cancel()
                return

    # -- start-up helpers -----------------------------------------------------

    async def _restore_envoy(self) -> None:
        """A restarted sidecar means the pod is not terminating: undo a stale DRAINING."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + RESTORE_GIVE_UP
        patience = loop.time() + API_PATIENCE
        while loop.time() < give_up:
            try:
                info = await self.admin.server_info()
            except EnvoyUnreachable:
                await asyncio.sleep(RESTORE_RETRY)
                continue
            except AdminError as exc:
                log.warning("could not read Envoy's state at start: %s", exc)
                await asyncio.sleep(RESTORE_RETRY)
                continue
            if self.listeners_mark.drained(info.uptime) and self.drain.started_at is None:
                self.listeners_drained = True
                self.metrics.listeners_drained.set(1)
                log.warning(
                    "Envoy's listeners were drained before this sidecar started (by a drain"
                    " with --health-check-failure-delay or --drain-listeners); that cannot be"
                    " undone: Envoy tells every client to go until it restarts. Restart the"
                    " Envoy container (or the pod) to serve normally again",
                    extra={"fields": {"mark": str(self.listeners_mark.path)}},
                )
            if info.draining and self.drain.started_at is None:
                if self.hook_mark.fresh():
                    self._join_hook_drain()
                    return
                if self.deletion is not None:
                    verdict = await self.deletion.check()
                    if verdict.error and loop.time() < patience:
                        await asyncio.sleep(RESTORE_RETRY)
                        continue  # Envoy stays DRAINING while the API server cannot say
                    if verdict.deleting:
                        self._resume_drain(verdict)
                        return
                await self.admin.healthcheck_ok()
                self.metrics.restored.inc()
                log.warning(
                    "Envoy was DRAINING when the sidecar started; restored it with "
                    "/healthcheck/ok (the kubelet never restarts a container of a pod being "
                    "deleted, so this pod is not terminating)",
                    extra={"fields": {"envoy_state": info.state}},
                )
            return

    def _join_hook_drain(self) -> None:
        """The preStop hook drains by itself (it could not reach us): this pod is being
        stopped. Restoring Envoy now would have it taking traffic when the kubelet stops it."""
        log.warning(
            "Envoy is DRAINING and a preStop hook is draining it by itself (%s): joining the"
            " drain, not restoring Envoy",
            self.hook_mark.path,
        )
        self.start_drain("a preStop hook draining Envoy by itself")

    def _resume_drain(self, verdict: Verdict) -> None:
        """A native sidecar is restarted even while its pod is being deleted (Kubernetes
        1.34+, KEP-4438): the drain a previous incarnation started goes on."""
        log.warning(
            "Envoy was DRAINING when the sidecar started and this pod is being deleted (%s):"
            " resuming the drain, not restoring Envoy",
            verdict.reason,
        )
        self.start_drain(f"sidecar restart during the pod's deletion ({verdict.reason})")

    def _deletion_verdict(self, verdict: Verdict) -> None:
        """Metrics for every answer of the API server; a log line when the answer changes."""
        self.metrics.deletion_checks.labels(
            "error" if verdict.error else "deleting" if verdict.deleting else "not_deleting"
        ).inc()
        if verdict.reason != self._verdict_logged:
            self._verdict_logged = verdict.reason
            (log.warning if verdict.error else log.info)(
                "API server on this pod's deletion: %s", verdict.reason
            )

    async def _start_http(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        for path in self.config.wait_paths:
            app.router.add_get(path, self._shutdown_wait)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/status", self._status)
        # A /shutdown whose caller hung up stops waiting (and asking the API server) at once.
        runner = web.AppRunner(app, **HTTP_SERVER_OPTIONS, handler_cancellation=True)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self.config.listen_host, self.config.listen_port)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {self.config.listen_host}:{self.config.listen_port}: "
                f"{exc.strerror}"
            ) from exc
        self.http_port = int(runner.addresses[0][1])

    async def _start_control(self) -> None:
        app = web.Application()
        app.router.add_post("/drain", self._drain_stream)
        app.router.add_get("/status", self._status)
        runner = web.AppRunner(app, **HTTP_SERVER_OPTIONS)
        await runner.setup()
        self._runners.append(runner)
        sock = bind_private_socket(self.config.control_socket)
        await web.SockSite(runner, sock).start()

    # -- handlers -------------------------------------------------------------

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "phase": self.drain.phase.value})

    async def _status(self, _: web.Request) -> web.Response:
        status = self.drain.status() | {
            "listeners_drained": self.listeners_drained,
            "shutdown_waiters": self.shutdown_waiters,
        }
        if self.deletion is not None:
            last = self.deletion.last
            status["deletion_check"] = {
                "asked": self.deletion.asked,
                "verdict": last.reason if last is not None else None,
            }
        return web.json_response(status)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain")

    async def _shutdown_wait(self, _: web.Request) -> web.Response:
        """Waits for the drain to end. Starts it only with --confirm-deletion and the API
        server's word that this pod is being deleted: the caller's word is never enough."""
        self.shutdown_waiters += 1
        try:
            with self._until_forced_exit():
                return await self._wait_for_release()
        finally:
            self.shutdown_waiters -= 1

    @contextlib.contextmanager
    def _until_forced_exit(self) -> Iterator[None]:
        task = asyncio.current_task()
        assert task is not None
        self._waiting_on_drain.add(task)
        try:
            yield
        finally:
            self._waiting_on_drain.discard(task)

    async def _wait_for_release(self) -> web.Response:
        waiters = {asyncio.ensure_future(self.drain.wait())}
        if self.ready.path is not None:
            waiters.add(asyncio.ensure_future(self.ready.wait()))
        confirm = None
        if self.deletion is not None and self.drain.started_at is None:
            confirm = asyncio.ensure_future(self._start_when_confirmed(self.deletion))
        try:
            done, _pending = await asyncio.wait(
                waiters, timeout=self.config.wait_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in [*waiters, confirm]:
                if waiter is not None:
                    waiter.cancel()
        if not done:
            log.warning("a /shutdown waiter timed out after %ss", self.config.wait_timeout)
            return web.json_response(self.drain.status() | {"released": False}, status=500)
        return web.json_response(self.drain.status() | {"released": True})

    async def _start_when_confirmed(self, deletion: DeletionCheck) -> None:
        """Ask until the pod is being deleted (or a drain started some other way)."""
        while self.drain.started_at is None:
            verdict = await deletion.check()
            if verdict.deleting and self.drain.started_at is None:
                self.start_drain(f"Envoy's preStop (/shutdown), API server: {verdict.reason}")
                return
            await asyncio.sleep(deletion.interval)

    async def _drain_stream(self, request: web.Request) -> web.StreamResponse:
        """The hook's policy (the flags it was given) applies to the drain it starts."""
        try:
            policy, notes = self._asked_policy(await request.read())
        except ValueError as exc:
            log.error("drain request refused: %s", exc)
            return web.Response(status=400, text=f"{exc}\n")
        with self._until_forced_exit():
            return await self._stream_drain(request, policy, notes)

    async def _stream_drain(
        self, request: web.Request, policy: DrainPolicy, notes: list[str]
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        events = self.drain.events()
        for note in notes:
            log.warning("%s", note)
        notes += self.start_drain("preStop hook (control socket)", policy)
        running = self.drain.policy
        lines = [self._line("note", note) for note in notes] + [
            self._line(
                "policy", f"policy: {describe(running)}", drain_timeout=running.drain_timeout
            )
        ]
        for line in lines:
            await response.write(json.dumps(line).encode() + b"\n")
        async for event in events:
            with contextlib.suppress(ConnectionError):
                await response.write(json.dumps(event.to_dict()).encode() + b"\n")
        return response

    def _line(self, kind: str, message: str, **fields: Any) -> dict[str, Any]:
        started = self.drain.started_at
        elapsed = round(time.time() - started, 3) if started is not None else 0.0
        return {"event": kind, "elapsed": elapsed, "message": message, **fields}

    def _asked_policy(self, body: bytes) -> tuple[DrainPolicy, list[str]]:
        """Serve's policy with the fields the hook gave (none: serve's as it is)."""
        if not body.strip():
            return self.config.policy, []
        try:
            asked = json.loads(body)
        except ValueError:
            raise ValueError("the body is not JSON") from None
        given = asked.get("policy", {}) if isinstance(asked, dict) else None
        if not isinstance(given, dict):
            raise ValueError('expected {"policy": {field: value}}')
        return with_overrides(self.config.policy, given)


def bind_private_socket(path: Path) -> socket.socket:
    """Bind a unix socket that only this user can open; replace a stale one, refuse a live one."""
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise StartupError(f"control socket path {path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
        else:
            raise StartupError(f"another shutdown-manager is serving {path}")
        finally:
            probe.close()
    if not path.parent.is_dir():
        raise StartupError(f"control socket directory {path.parent} does not exist")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot bind control socket {path}: {exc.strerror}") from exc
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(64)
    sock.setblocking(False)
    return sock
