"""A pod runner that starts and stops containers as the kubelet does (DESIGN.md section 1, and
the kubelet's own code: kuberuntime's container termination, KEP-753 and KEP-4438).

Start:
* Init containers in order. A regular one must exit 0 before the next starts (a failure is
  retried after the crash-loop back-off). A native sidecar (an init container with
  restartPolicy Always) is started and the next container waits for its startupProbe.
* Then the regular containers, in order, none waiting for another.
* While the pod runs, a container that exits is restarted: at once the first time, then
  after the back-off (10 s, doubling, at most 300 s). A startupProbe (native sidecars) or a
  livenessProbe that fails its threshold has the container stopped (preStop hook, SIGTERM,
  SIGKILL at its grace) and started again; liveness is not probed once the pod is deleted.

Deletion, every container at once (the kubelet's killContainer):
* each container's preStop hook (exec or httpGet) starts at once, a native sidecar's included;
* a regular container gets SIGTERM as soon as its own hook returns (or fails);
* a native sidecar gets SIGTERM once its hook has returned, every regular container has
  exited and every sidecar declared after it has exited (reverse order); until then a sidecar
  that exits is restarted, its hook not run again (KEP-4438, on by default from 1.34);
* the grace period is shared: a hook still running at deletion + grace is abandoned; SIGKILL
  comes at deletion + grace, never sooner than 2 s after the container's SIGTERM (the
  kubelet's minimum, which is also the 2 s it grants a hook that overran).
* An exec hook's output is not shown (only a failure is recorded, as FailedPreStopHook).

`sidecar_hooks="in-turn"` runs a sidecar's preStop hook only when its turn to stop comes, as
DESIGN.md section 1.7 and the native-sidecar issue describe it (the kubelet's code and KEP-753
run it at deletion): our wiring must drain with zero failed requests under both.

The report says when each step happened, so tests can check the order and the timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx

MINIMUM_GRACE = 2.0
"""Seconds between SIGTERM and SIGKILL at the least (the kubelet's minimumGracePeriodInSeconds;
also the one-off extension a preStop hook still running at the deadline earns)."""

BACK_OFF = 10.0
"""The kubelet's crash-loop back-off: first restart at once, then 10 s, doubling."""

BACK_OFF_MAX = 300.0

SUPERVISE_EVERY = 0.02

SidecarHooks = Literal["at-deletion", "in-turn"]
RestartPolicy = Literal["Always", "OnFailure", "Never"]


@dataclass(frozen=True)
class ExecHook:
    argv: list[str]


@dataclass(frozen=True)
class HttpGetHook:
    port: int
    path: str
    host: str | None = None
    """None: the pod's address, as the kubelet does."""


Hook = ExecHook | HttpGetHook


@dataclass(frozen=True)
class HttpProbe:
    """An httpGet startup or liveness probe (periods in seconds; the kubelet's are whole
    seconds)."""

    port: int
    path: str
    period: float = 0.1
    failure_threshold: int = 300
    timeout: float = 1.0


@dataclass
class Container:
    name: str
    argv: list[str]
    pre_stop: Hook | None = None
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    restart_policy: Literal["Always"] | None = None
    """`Always` on an init container makes it a native sidecar."""
    startup_probe: HttpProbe | None = None
    liveness_probe: HttpProbe | None = None
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    stopping: bool = False
    """Its stop has begun (SIGTERM sent or about to be): it is never restarted again."""
    exited_at: float | None = None
    """When the supervisor saw its last exit (for the back-off)."""

    def start(self) -> None:
        log = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                start_new_session=True, env={**os.environ, **self.env},
            )  # fmt: skip
        finally:
            if self.log_path and not isinstance(log, int):
                log.close()
        self.exited_at = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    @property
    def exit_status(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def exec_argv(self, argv: list[str]) -> list[str]:
        """How an exec hook runs inside this container (a process: as it is, with its env)."""
        return argv


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


@dataclass(frozen=True)
class Step:
    at: float
    container: str
    what: str
    """`started`, `startup probe passed`, `completed`, `exited N`, `restarted`."""


class Pod:
    def __init__(
        self,
        name: str,
        containers: list[Container],
        grace_period: float = 30.0,
        init_containers: list[Container] | None = None,
        sidecar_hooks: SidecarHooks = "at-deletion",
        back_off: float = BACK_OFF,
        restart_policy: RestartPolicy = "Always",
    ) -> None:
        self.name = name
        self.restart_policy = restart_policy
        """The pod's: what happens to a regular container that exits while the pod runs."""
        self.containers = containers
        self.init_containers = init_containers or []
        self.grace_period = grace_period
        self.sidecar_hooks = sidecar_hooks
        self.back_off = back_off
        self.timeline: list[Step] = []
        self.terminating = False
        self._started: list[Container] = []
        """Containers the kubelet keeps running: sidecars and regular ones, in start order."""
        self._supervisor: asyncio.Task[None] | None = None
        self._liveness: list[asyncio.Task[None]] = []

    @property
    def address(self) -> str:
        """Where the pod's network is reached (httpGet hooks and probes)."""
        return "127.0.0.1"

    @property
    def sidecars(self) -> list[Container]:
        return [c for c in self.init_containers if c.restart_policy == "Always"]

    def container(self, name: str) -> Container:
        return next(c for c in [*self.init_containers, *self.containers] if c.name == name)

    def _step(self, container: Container, what: str) -> None:
        self.timeline.append(Step(time.monotonic(), container.name, what))

    # -- start --------------------------------------------------------------------------

    async def start(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise(), name=f"{self.name}-supervisor")
        for init in self.init_containers:
            if init.restart_policy == "Always":
                self._launch(init)
                if init.startup_probe is not None:
                    await self._until_started(init, init.startup_probe)
            else:
                await self._run_to_completion(init)
        for regular in self.containers:
            self._launch(regular)

    def _launch(self, container: Container) -> None:
        container.start()
        self._started.append(container)
        self._step(container, "started")
        if container.liveness_probe is not None:
            probe = self._stay_alive(container, container.liveness_probe)
            self._liveness.append(asyncio.create_task(probe, name=f"{container.name}-liveness"))

    async def _run_to_completion(self, container: Container) -> None:
        while True:
            container.start()
            self._step(container, "started")
            while container.running:  # noqa: ASYNC110 - a child process
                await asyncio.sleep(SUPERVISE_EVERY)
            status = container.exit_status
            self._step(container, "completed" if status == 0 else f"exited {status}")
            if status == 0:
                return
            await asyncio.sleep(self._delay(container))
            container.restarts += 1

    async def _until_started(self, container: Container, probe: HttpProbe) -> None:
        url = f"http://{self.address}:{probe.port}{probe.path}"
        failures = 0
        async with httpx.AsyncClient(trust_env=False, timeout=probe.timeout) as client:
            while True:
                await asyncio.sleep(probe.period)
                if await http_probe(client, url):
                    self._step(container, "startup probe passed")
                    return
                failures += 1
                if failures >= probe.failure_threshold:
                    self._step(container, "startup probe failed")
                    await self._stop_for_restart(container)
                    failures = 0

    async def _stay_alive(self, container: Container, probe: HttpProbe) -> None:
        """The livenessProbe: `failure_threshold` failures in a row and the container is
        stopped the kubelet's way (its preStop hook runs: Envoy Gateway #5832) and restarted."""
        url = f"http://{self.address}:{probe.port}{probe.path}"
        failures, started = 0, -1
        async with httpx.AsyncClient(trust_env=False, timeout=probe.timeout) as client:
            while not self.terminating:
                if started != container.restarts:  # the startupProbe gates liveness
                    started = await self._started_as(container, client)
                    continue
                await asyncio.sleep(probe.period)
                if self.terminating or container.stopping or not container.running:
                    failures = 0
                    continue
                failures = 0 if await http_probe(client, url) else failures + 1
                if failures >= probe.failure_threshold and not self.terminating:
                    self._step(container, "liveness probe failed")
                    await self._stop_for_restart(container)
                    failures = 0

    async def _started_as(self, container: Container, client: httpx.AsyncClient) -> int:
        """The incarnation (restart count) whose startupProbe has passed, or -1 for none
        yet; without a startupProbe the container counts as started at once."""
        probe = container.startup_probe
        if probe is None:
            return container.restarts
        incarnation = container.restarts
        url = f"http://{self.address}:{probe.port}{probe.path}"
        if container.running and await http_probe(client, url):
            self._step(container, "startup probe passed")
            return incarnation
        await asyncio.sleep(probe.period)
        return -1

    async def _stop_for_restart(self, container: Container) -> None:
        """A probe failure: the kubelet runs the preStop hook, stops the container, starts
        it again (the supervisor does, after the back-off)."""
        deadline = time.monotonic() + self.grace_period
        container.stopping = True  # the supervisor restarts it once stopped, not before
        if container.pre_stop is not None:
            with contextlib.suppress(TimeoutError):
                await _run_hook(container.pre_stop, deadline, container, self.address)
        container.signal(signal.SIGTERM)
        await _wait_exit(container, max(deadline, time.monotonic() + MINIMUM_GRACE))
        container.signal(signal.SIGKILL)
        await _wait_exit(container, time.monotonic() + 5)
        container.stopping = False

    # -- running ------------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Restart what exits while it should run, with the kubelet's back-off."""
        while True:
            for container in self._started:
                if not container.running and self._keeps_running(container):
                    self._restart_when_due(container)
            await asyncio.sleep(SUPERVISE_EVERY)

    def _keeps_running(self, container: Container) -> bool:
        if container.stopping:
            return False
        if container.restart_policy == "Always":
            return True  # a native sidecar, until its turn to stop
        if self.terminating or self.restart_policy == "Never":
            return False
        return self.restart_policy == "Always" or container.exit_status != 0

    @property
    def succeeded(self) -> bool:
        """Every regular container exited 0 and none will restart (a Job's pod)."""
        return all(not c.running and c.exit_status == 0 for c in self.containers)

    def _restart_when_due(self, container: Container) -> None:
        now = time.monotonic()
        if container.exited_at is None:
            container.exited_at = now
            self._step(container, f"exited {container.exit_status}")
        if now >= container.exited_at + self._delay(container):
            container.start()
            container.restarts += 1
            self._step(container, "restarted")

    def _delay(self, container: Container) -> float:
        if container.restarts == 0:
            return 0.0
        return float(min(self.back_off * 2 ** (container.restarts - 1), BACK_OFF_MAX))

    # -- deletion -----------------------------------------------------------------------

    def kill(self) -> None:
        """Teardown: SIGKILL whatever is left (by PID), as a test must."""
        if self._supervisor is not None:
            self._supervisor.cancel()
        for task in self._liveness:
            task.cancel()
        for container in [*self.init_containers, *self.containers]:
            container.stopping = True
            container.signal(signal.SIGKILL)
            if container.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    container.proc.wait(timeout=5)

    async def delete(self) -> TerminationReport:
        """Terminate the pod the kubelet's way; return when every container has exited."""
        self.terminating = True
        report = TerminationReport(deleted_at=time.monotonic(), grace_period=self.grace_period)
        running = [c for c in self._started if c.running]
        report.containers = {c.name: ContainerReport(c.name) for c in running}
        deadline = report.deleted_at + self.grace_period
        gone = {c.name: asyncio.Event() for c in running}
        await asyncio.gather(
            *(self._terminate(c, report.containers[c.name], deadline, gone) for c in running)
        )
        if self._supervisor is not None:
            self._supervisor.cancel()
        for task in self._liveness:
            task.cancel()
        return report

    async def _terminate(
        self,
        container: Container,
        report: ContainerReport,
        deadline: float,
        gone: dict[str, asyncio.Event],
    ) -> None:
        sidecar = container.restart_policy == "Always"
        if sidecar and self.sidecar_hooks == "in-turn":
            await self._turn(container, deadline, gone)
        if container.pre_stop is not None and container.running:
            await self._hook(container, report, deadline)
        if sidecar and self.sidecar_hooks == "at-deletion":
            await self._turn(container, deadline, gone)
        container.stopping = True
        report.sigterm_at = time.monotonic()
        container.signal(signal.SIGTERM)
        await _wait_exit(container, max(deadline, report.sigterm_at + MINIMUM_GRACE))
        if container.running:
            report.sigkill_at = time.monotonic()
            container.signal(signal.SIGKILL)
            await _wait_exit(container, time.monotonic() + 5)
        report.exited_at = time.monotonic()
        report.exit_status = container.exit_status
        if container.name in gone:
            gone[container.name].set()

    async def _turn(
        self, container: Container, deadline: float, gone: dict[str, asyncio.Event]
    ) -> None:
        """A sidecar stops after every regular container, and after the sidecars declared
        after it (reverse order), or at the deadline."""
        sidecars = self.sidecars
        later = sidecars[sidecars.index(container) + 1 :]
        before = [gone[c.name] for c in [*self.containers, *later] if c.name in gone]
        waiting = [asyncio.ensure_future(event.wait()) for event in before]
        if waiting:
            await asyncio.wait(waiting, timeout=max(0.0, deadline - time.monotonic()))
        for task in waiting:
            task.cancel()

    async def _hook(self, container: Container, report: ContainerReport, deadline: float) -> None:
        assert container.pre_stop is not None
        if time.monotonic() >= deadline:
            return  # no grace left: the kubelet skips the hook
        report.hook_started = time.monotonic()
        try:
            report.hook_result, report.hook_exit = await asyncio.wait_for(
                _run_hook(container.pre_stop, deadline, container, self.address),
                max(0.0, deadline - time.monotonic()),
            )
        except TimeoutError:
            report.hook_result = "killed at deadline"
        report.hook_ended = time.monotonic()


async def http_probe(client: httpx.AsyncClient, url: str) -> bool:
    """One httpGet probe: 2xx and 3xx pass, as the kubelet counts them."""
    try:
        return 200 <= (await client.get(url)).status_code < 400
    except httpx.HTTPError:
        return False


async def _wait_exit(container: Container, until: float) -> None:
    while container.running and time.monotonic() < until:  # noqa: ASYNC110 - a child process
        await asyncio.sleep(0.01)


async def _run_hook(
    hook: Hook, deadline: float, container: Container, address: str
) -> tuple[str, int | None]:
    budget = max(0.1, deadline - time.monotonic())
    if isinstance(hook, ExecHook):
        proc = await asyncio.create_subprocess_exec(
            *container.exec_argv(hook.argv),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, **container.env},
        )  # fmt: skip
        try:
            status = await asyncio.wait_for(proc.wait(), budget)
        except (TimeoutError, asyncio.CancelledError):
            proc.kill()
            await proc.wait()
            raise
        return ("ok" if status == 0 else f"failed: exit {status}"), status
    url = f"http://{hook.host or address}:{hook.port}{hook.path}"
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=budget) as client:
            response = await client.get(url)
    except httpx.HTTPError as exc:
        return f"failed: {exc!r}", None
    ok = 200 <= response.status_code < 400
    return ("ok" if ok else f"failed: HTTP {response.status_code}"), response.status_code
