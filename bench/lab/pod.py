"""A pod runner that terminates containers exactly as the kubelet does (DESIGN.md section 1).

* Containers are processes, started in order.
* Deletion: every container's preStop hook (exec or httpGet) starts at once, in parallel.
* Each container gets SIGTERM as soon as its *own* hook returns or fails.
* At deletion + terminationGracePeriodSeconds every container still alive gets SIGKILL; a
  hook still running then earns the pod a one-off 2 s extension first, as the kubelet gives.
* An exec hook's output is not shown (only a failure is recorded, as FailedPreStopHook).

The report says when each step happened, so tests can check the order and the timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HOOK_EXTENSION = 2.0
"""The kubelet's one-off extension for a preStop hook still running at the grace deadline."""


@dataclass(frozen=True)
class ExecHook:
    argv: list[str]


@dataclass(frozen=True)
class HttpGetHook:
    port: int
    path: str
    host: str = "127.0.0.1"


Hook = ExecHook | HttpGetHook


@dataclass
class Container:
    name: str
    argv: list[str]
    pre_stop: Hook | None = None
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        finally:
            if self.log_path and not isinstance(log, int):
                log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)


@dataclass
class ContainerReport:
    name: str
    hook_started: float | None = None
    hook_ended: float | None = None
    hook_result: str = "none"
    """`ok`, `failed: ...` (FailedPreStopHook), `killed at deadline` or `none`."""
    hook_exit: int | None = None
    sigterm_at: float | None = None
    sigkill_at: float | None = None
    exited_at: float | None = None
    exit_status: int | None = None


@dataclass
class TerminationReport:
    deleted_at: float
    grace_period: float
    containers: dict[str, ContainerReport] = field(default_factory=dict)

    @property
    def gone_at(self) -> float:
        return max(r.exited_at or self.deleted_at for r in self.containers.values())

    @property
    def duration(self) -> float:
        return self.gone_at - self.deleted_at

    @property
    def killed(self) -> list[str]:
        return [name for name, r in self.containers.items() if r.sigkill_at is not None]


class Pod:
    def __init__(self, name: str, containers: list[Container], grace_period: float = 30.0) -> None:
        self.name = name
        self.containers = containers
        self.grace_period = grace_period

    def start(self) -> None:
        for container in self.containers:
            container.start()

    def kill(self) -> None:
        """Teardown: SIGKILL whatever is left (by PID), as a test must."""
        for container in self.containers:
            container.signal(signal.SIGKILL)
            if container.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    container.proc.wait(timeout=5)

    async def delete(self) -> TerminationReport:
        """Terminate the pod the kubelet's way; return when every container has exited."""
        report = TerminationReport(deleted_at=time.monotonic(), grace_period=self.grace_period)
        report.containers = {c.name: ContainerReport(c.name) for c in self.containers}
        deadline = report.deleted_at + self.grace_period
        hooks = {
            c.name: asyncio.create_task(
                self._hook_then_term(c, report.containers[c.name], deadline)
            )
            for c in self.containers
        }
        await asyncio.wait(hooks.values(), timeout=max(0.0, deadline - time.monotonic()))
        if any(not task.done() for task in hooks.values()):
            await asyncio.wait(hooks.values(), timeout=HOOK_EXTENSION)
        for name, task in hooks.items():
            if not task.done():
                task.cancel()
                report.containers[name].hook_result = "killed at deadline"
        await self._kill_survivors(report, deadline)
        return report

    async def _hook_then_term(
        self, container: Container, report: ContainerReport, deadline: float
    ) -> None:
        if container.pre_stop is not None and container.running:
            report.hook_started = time.monotonic()
            report.hook_result, report.hook_exit = await _run_hook(container.pre_stop, deadline)
            report.hook_ended = time.monotonic()
        report.sigterm_at = time.monotonic()
        container.signal(signal.SIGTERM)
        await self._wait_exit(container, report, deadline + HOOK_EXTENSION)

    async def _wait_exit(self, container: Container, report: ContainerReport, until: float) -> None:
        while container.running and time.monotonic() < until:  # noqa: ASYNC110 - a child process
            await asyncio.sleep(0.01)
        if not container.running and report.exited_at is None:
            report.exited_at = time.monotonic()
            assert container.proc is not None
            report.exit_status = container.proc.returncode

    async def _kill_survivors(self, report: TerminationReport, deadline: float) -> None:
        for container in self.containers:
            entry = report.containers[container.name]
            if container.running:
                entry.sigkill_at = time.monotonic()
                container.signal(signal.SIGKILL)
            await self._wait_exit(container, entry, time.monotonic() + 5)


async def _run_hook(hook: Hook, deadline: float) -> tuple[str, int | None]:
    budget = max(0.1, deadline + HOOK_EXTENSION - time.monotonic())
    if isinstance(hook, ExecHook):
        proc = await asyncio.create_subprocess_exec(
            *hook.argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            status = await asyncio.wait_for(proc.wait(), budget)
        except (TimeoutError, asyncio.CancelledError):
            proc.kill()
            await proc.wait()
            raise
        return ("ok" if status == 0 else f"failed: exit {status}"), status
    url = f"http://{hook.host}:{hook.port}{hook.path}"
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=budget) as client:
            response = await client.get(url)
    except httpx.HTTPError as exc:
        return f"failed: {exc!r}", None
    ok = 200 <= response.status_code < 400
    return ("ok" if ok else f"failed: HTTP {response.status_code}"), response.status_code
