"""The e2e scenarios as a benchmark: ours against the anchors' policies, same Envoy and load.

For each client scenario (tests/e2e/scenarios.py) and each policy, a fresh Envoy serves the
load and is terminated:

* ours: the kubelet-faithful pod runner with the real sidecar and hook;
* Contour's and Envoy Gateway's policies (bench/anchors.py), run as Envoy's preStop would
  wait on them; Envoy gets SIGTERM when they return.

Measured: failed requests; release latency (condition met -> Envoy gets SIGTERM, where the
condition is the later of the policy's minimum drain, counted from when the policy was
invoked, and Envoy's last connection closing, seen by a 20 ms sampler on the probe
listener's /stats); total termination time; admin requests; and, for our sidecar, peak RSS
and CPU time.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from bench.anchors import contour, envoy_gateway
from bench.lab.backend import Backend
from bench.lab.envoy import Envoy, probe_connections
from bench.lab.envoy_pod import EnvoyPod, envoy_pod
from bench.lab.pod import TerminationReport
from bench.lab.scenarios import DRAINING_SCENARIOS, Scenario
from shutdown_manager.address import parse_admin_address
from shutdown_manager.admin import AdminClient
from shutdown_manager.stats import ListenerFilter

MIN_DRAIN = 2.0
"""The minimum drain ours and Envoy Gateway's policy get (Contour's has none)."""

POLICIES = ("ours", "envoy_gateway", "contour")
LABELS = {"ours": "envoy-lifecycle", "envoy_gateway": "Envoy Gateway", "contour": "Contour"}


@dataclass
class Row:
    failed: int = 0
    latency: float | None = None
    termination: float = 0.0
    admin_requests: int = 0
    peak_rss: int | None = None
    cpu: float | None = None


class Sampler:
    """Envoy's active connections every 20 ms, through the probe listener (not the admin)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.last_nonzero = 0.0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        async with httpx.AsyncClient(trust_env=False, timeout=1) as client:
            while not self._stop.is_set():
                if (await probe_connections(client, self.port) or 0) > 0:
                    self.last_nonzero = time.monotonic()
                await asyncio.sleep(0.02)


class OurTarget:
    """Our pod, with the sidecar's footprint measured over the termination."""

    def __init__(self, pod: EnvoyPod) -> None:
        self.pod = pod
        self.released = 0.0
        self.peak_rss = 0
        self.cpu: float | None = None
        self.url = pod.url

    @property
    def tcp_port(self) -> int:
        return self.pod.tcp_port

    async def delete(self) -> TerminationReport:
        sidecar = self.pod.pod.containers[1]
        assert sidecar.proc is not None
        process = psutil.Process(sidecar.proc.pid)
        cpu_before = sum(process.cpu_times()[:2])
        watcher = asyncio.create_task(self._watch(process))
        report = await self.pod.pod.delete()
        watcher.cancel()
        self.cpu = sum(self._last_cpu[:2]) - cpu_before if self._last_cpu else None
        envoy = report.containers["envoy"]
        self.released = envoy.sigterm_at or 0.0
        return report

    async def _watch(self, process: psutil.Process) -> None:
        self._last_cpu: tuple[float, ...] = ()
        while True:
            try:
                self.peak_rss = max(self.peak_rss, process.memory_info().rss)
                self._last_cpu = tuple(process.cpu_times())
            except psutil.Error:
                return
            await asyncio.sleep(0.05)


class AnchorTarget:
    """Envoy alone; its preStop waits on an anchor's policy, then it gets SIGTERM."""

    def __init__(self, envoy: Envoy, policy: str) -> None:
        self.envoy = envoy
        self.policy = policy
        self.released = 0.0
        self.admin_requests = 0

    def url(self, path: str = "/") -> str:
        return self.envoy.url(path)

    @property
    def tcp_port(self) -> int:
        return self.envoy.ports["tcp_passthrough"]

    async def delete(self) -> float:
        started = time.monotonic()
        async with AdminClient(parse_admin_address(self.envoy.admin_address)) as admin:
            if self.policy == "contour":
                self.released = await contour(admin)
            else:
                self.released = await envoy_gateway(
                    admin, MIN_DRAIN, 25.0, ListenerFilter(("probe",))
                )
            self.admin_requests = admin.requests
        assert self.envoy.proc is not None
        self.envoy.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(self.envoy.proc.wait, 10)
        return time.monotonic() - started


async def run_one(scenario: Scenario, policy: str, work: Path) -> Row:
    backend = await Backend().start()
    try:
        if policy == "ours":
            return await _ours(scenario, work, backend)
        return await _anchor(scenario, policy, work, backend)
    finally:
        await backend.stop()


async def _ours(scenario: Scenario, work: Path, backend: Backend) -> Row:
    pod = envoy_pod(work, backend.port, min_drain=MIN_DRAIN, drain_timeout=20, grace_period=25)
    try:
        await pod.start()
        target = OurTarget(pod)
        sampler = Sampler(pod.envoy.ports["probe"])
        sampler.start()
        result = await scenario(target)
        await sampler.stop()
        report = result.report
        assert isinstance(report, TerminationReport)
        return Row(
            failed=result.failed,
            latency=_latency(
                report.containers["shutdown-manager"].hook_started or result.deleted_at,
                target.released,
                sampler,
                MIN_DRAIN,
            ),
            termination=report.duration,
            admin_requests=int(pod.drain_outcome()["admin_requests"]),
            peak_rss=target.peak_rss,
            cpu=target.cpu,
        )
    finally:
        pod.pod.kill()


async def _anchor(scenario: Scenario, policy: str, work: Path, backend: Backend) -> Row:
    envoy = Envoy(workdir=work, backend_port=backend.port, drain_time_s=20)
    try:
        await envoy.start()
        target = AnchorTarget(envoy, policy)
        sampler = Sampler(envoy.ports["probe"])
        sampler.start()
        result = await scenario(target)
        await sampler.stop()
        minimum = 0.0 if policy == "contour" else MIN_DRAIN
        duration = result.report
        assert isinstance(duration, float)
        return Row(
            failed=result.failed,
            latency=_latency(result.deleted_at, target.released, sampler, minimum),
            termination=duration,
            admin_requests=target.admin_requests,
        )
    finally:
        envoy.stop()


def _latency(started: float, released: float, sampler: Sampler, minimum: float) -> float | None:
    """Release minus the moment it became safe; None if released while connections remained.

    `started` is when the policy was invoked: deletion for the in-process anchor models, the
    moment the runner started our exec hook for ours (so neither pays for the runner's own
    scheduling; ours still pays for starting a Python process, which the models do not)."""
    condition = max(started + minimum, sampler.last_nonzero)
    if sampler.last_nonzero > released:
        return None
    return released - condition


async def scenario_rows(work: Callable[[], Path]) -> tuple[list[str], list[list[str]]]:
    header = [
        "scenario",
        "policy",
        "failed",
        "release latency",
        "termination",
        "admin calls",
        "sidecar RSS / CPU",
        "termination vs ours",
    ]
    rows: list[list[str]] = []
    for name, scenario in DRAINING_SCENARIOS.items():
        results = {policy: await run_one(scenario, policy, work()) for policy in POLICIES}
        ours = results["ours"]
        for policy, row in results.items():
            latency = (
                f"{row.latency * 1000:.0f} ms"
                if row.latency is not None
                else ("cut early" if row.failed else "idle conns left")
            )
            footprint = "-"
            if row.peak_rss is not None:
                footprint = f"{row.peak_rss / 2**20:.0f} MiB / {(row.cpu or 0) * 1000:.0f} ms"
            ratio = f"{row.termination / ours.termination:.2f}x" if ours.termination else "-"
            rows.append(
                [name, LABELS[policy], str(row.failed), latency, f"{row.termination:.2f} s",
                 str(row.admin_requests), footprint, ratio]
            )  # fmt: skip
    return header, rows
