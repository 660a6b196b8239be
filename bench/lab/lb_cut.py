"""A pod deleted behind a load balancer that cuts established flows when a node's health
check fails (AWS NLB, GKE L4, `externalTrafficPolicy: Local`), as HAProxy in TCP mode with
`on-marked-down shutdown-sessions`.

Two Envoy pods behind it; HTTP/1.1 clients keep connections open and always have a request
in flight (the backend answers in SLOW seconds). At the deletion the balancer sends no new
flow to the node (the endpoint left the Service) but keeps its established ones; the pod's
preStop drains. Failing the health check at once cuts every flow still on the node, requests
in flight with them. With `--health-check-failure-delay`, clients are first told to go
(`Connection: close` on their next response), open their next connection to the other node,
and the health check fails once the node has no flow left.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from bench.lab.backend import Backend
from bench.lab.clients import Tally, steady_load
from bench.lab.envoy_pod import EnvoyPod, Wiring, envoy_pod
from bench.lab.haproxy import HAProxy

NODES = ("127.0.0.2", "127.0.0.3")
SLOW = 0.2
"""Seconds the backend takes per request: a request is in flight most of the time."""
CLIENTS = 6
MIN_DRAIN = 2.0


@dataclass
class LbCut:
    delay: float
    ok: int
    failed: int
    errors: list[str]
    pod_gone_after: float


async def pod_behind_cutting_lb(workdir: Path, delay: float, wiring: Wiring = "classic") -> LbCut:
    """Delete one of two pods under load; what the clients saw."""
    backend = await Backend("lb").start()
    policy = ("--health-check-failure-delay", f"{delay}s") if delay else ()
    pods: list[EnvoyPod] = []
    proxy: HAProxy | None = None
    try:
        for index, address in enumerate(NODES):
            pod = envoy_pod(
                workdir, backend.port, address=address, min_drain=MIN_DRAIN, name=f"n{index}",
                policy=policy, wiring=wiring,
            )  # fmt: skip
            pods.append(pod)
            await pod.start()
        nodes = {
            f"n{i}": (p.envoy.address, p.envoy.ports["ingress_http"], p.envoy.ports["probe"])
            for i, p in enumerate(pods)
        }
        proxy = await HAProxy(workdir, nodes, l4=True).start()
        stop, tally = asyncio.Event(), Tally()
        url = f"{proxy.url}slow?s={SLOW}"
        load = [asyncio.create_task(steady_load(url, stop, tally, pause=0)) for _ in range(CLIENTS)]
        await asyncio.sleep(1.0)  # every client has a flow, on one node or the other
        started = time.monotonic()
        await proxy.take_out("n0")
        report = await pods[0].delete()
        gone = time.monotonic() - started
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*load)
        if report.killed:
            raise RuntimeError(f"the pod was killed at its grace period: {report.killed}")
        return LbCut(delay, tally.ok, tally.failed, tally.errors, gone)
    finally:
        if proxy is not None:
            proxy.stop()
        for pod in pods:
            pod.pod.kill()
        await backend.stop()
