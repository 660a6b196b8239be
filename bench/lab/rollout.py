"""Backend rollouts as Kubernetes does them, with real processes: pods are rollout_app
processes on their own loopback address (127.0.0.x, one port, as pods on a node), their
EndpointSlice written as the EndpointSlice controller would, and the kubelet's side of a
deletion (preStop, SIGTERM, the grace period, SIGKILL) kept.

A deletion starts the pod's termination and, `lag` seconds later (0 to 1 s in a cluster:
nothing waits for the other), its endpoint turning `ready: false, serving, terminating`;
the endpoint leaves the slice once the pod exited.

Clients send keep-alive GETs and POSTs with unique ids, long streaming GETs and WebSocket
sessions through Envoy the whole time; the result says what failed and which POST ids the
apps executed, how often.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from bench.lab.envoy import free_port
from bench.lab.wait import until
from bench.lab.xds import XdsEnvoy, XdsServer, ingress, rule, service, write_manifests

GRACE_S = 30.0
"""The pods' terminationGracePeriodSeconds (Kubernetes' default)."""
STUBBORN_GRACE_S = 4.0
"""The same for an app that ignores SIGTERM (it is SIGKILLed at the end: kept short)."""
PRE_STOP_SLEEP_S = 2.0
TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"
ROLLOUTS = ("surge", "single", "scale-down", "delete")
"""surge: 3 replicas rolled one by one (a new pod ready, then an old one deleted); single:
the same with 1 replica; scale-down: one of 3 deleted, none replaces it; delete (or an
eviction): one of 3 deleted while its replacement starts. And `lone-delete`: the pod of a
single replica deleted, its replacement ready only once the old one is terminating (only
KEP-1669's fallback keeps the Service answering meanwhile)."""
BEHAVIOURS = ("graceful", "exit", "ignore", "unready", "prestop-sleep", "prestop-drained")
"""What the app does on SIGTERM (rollout_app.py), or a graceful app behind a preStop: a blind
2 s sleep, or xds-server's `GET /drained?ip=` (returns once no Envoy sends it new requests)."""
PRE_STOP_HOOKS = ("prestop-sleep", "prestop-drained")

Apply = Callable[[dict[str, Any]], Awaitable[None] | None]


@dataclass
class BackendPod:
    name: str
    ip: str
    proc: subprocess.Popen[bytes]
    record: Path
    serving: bool = True
    terminating: bool = False


@dataclass
class Outcome:
    sent: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    failed_posts: set[str] = field(default_factory=set)
    executed: Counter[str] = field(default_factory=Counter)
    """POST id -> how many times an app executed it."""
    hook_waits: list[float] = field(default_factory=list)
    """How long each deleted pod's preStop took (0 without one)."""

    @property
    def executed_twice(self) -> list[str]:
        return [i for i, n in self.executed.items() if n > 1]

    @property
    def failed_unseen(self) -> set[str]:
        """Failed POSTs no app executed: lost before the app had them."""
        return self.failed_posts - set(self.executed)

    def line(self) -> str:
        return (
            f"GET {self.failed['GET']}/{self.sent['GET']} failed, "
            f"STREAM {self.failed['STREAM']}/{self.sent['STREAM']}, "
            f"WS handshakes {self.failed['WS']}/{self.sent['WS']}, "
            f"POST {self.failed['POST']}/{self.sent['POST']} failed "
            f"({len(self.failed_unseen)} never reached an app), "
            f"{len(self.executed_twice)} POSTs executed twice; {dict(self.errors)}; "
            f"preStop {', '.join(f'{w:.2f}' for w in self.hook_waits)} s"
        )


class Rollout:
    """Backend pods of Service `backend` (port `port`) and their EndpointSlice."""

    def __init__(
        self,
        workdir: Path,
        apply: Apply,
        port: int,
        behaviour: str,
        seed: int = 0,
        drained_url: str = "",
        h2c: bool = False,
    ) -> None:
        self.workdir, self.apply, self.port, self.behaviour = workdir, apply, port, behaviour
        self.drained_url = drained_url
        """xds-server's /drained, for the `prestop-drained` hook."""
        self.hook_waits: list[float] = []
        self.h2c = h2c
        """The pods speak h2c too (the Service port says `kubernetes.io/h2c`)."""
        self.pods: dict[str, BackendPod] = {}
        self.gone: list[BackendPod] = []
        self._numbers = itertools.count(2)
        self._lock = asyncio.Lock()
        self._rng = random.Random(seed)
        self._terminations: list[asyncio.Task[None]] = []
        self.lags: list[float] = []

    # --- pods -----------------------------------------------------------------------

    @property
    def grace_s(self) -> float:
        return STUBBORN_GRACE_S if self.behaviour == "ignore" else GRACE_S

    async def start_pod(self, ready: bool = True) -> BackendPod:
        """A new pod, listening; in the slice at once (`ready`) or by `make_ready` later."""
        pod = await self._start_process()
        if ready:
            await self.make_ready(pod)
        return pod

    async def make_ready(self, pod: BackendPod) -> None:
        self.pods[pod.name] = pod
        await self.publish()  # ready: the kubelet's readiness probe passed

    async def _start_process(self) -> BackendPod:
        number = next(self._numbers)
        name, ip = f"backend-{number}", f"127.0.0.{number}"
        record = self.workdir / f"{name}.posts"
        on_sigterm = "graceful" if self.behaviour in PRE_STOP_HOOKS else self.behaviour
        argv = [
            sys.executable, "-m", "bench.lab.rollout_app", "--host", ip,
            "--port", str(self.port), "--name", name, "--record", str(record),
            "--on-sigterm", on_sigterm, *(["--h2c"] if self.h2c else []),
        ]  # fmt: skip
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        pod = BackendPod(name, ip, proc, record)
        await until(lambda: self._answers(pod), 20, f"{name} listening")
        return pod

    async def _answers(self, pod: BackendPod) -> bool:
        assert pod.proc.poll() is None, f"{pod.name} exited"
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=1) as client:
                return (await client.get(f"http://{pod.ip}:{self.port}/")).status_code == 200
        except httpx.HTTPError:
            return False

    def delete(self, pod: BackendPod) -> None:
        """Start deleting a pod (its endpoint update and its termination run on their own)."""
        self._terminations.append(asyncio.create_task(self._terminate(pod)))

    async def _terminate(self, pod: BackendPod) -> None:
        lag = self._rng.uniform(0, 1)
        self.lags.append(lag)
        endpoint = asyncio.create_task(self._mark_terminating(pod, lag))
        began = time.monotonic()
        if self.behaviour == "prestop-sleep":
            await asyncio.sleep(PRE_STOP_SLEEP_S)
        elif self.behaviour == "prestop-drained":
            await self._drained_hook(pod)
        self.hook_waits.append(time.monotonic() - began)
        pod.proc.terminate()
        try:
            await asyncio.to_thread(pod.proc.wait, self.grace_s)
        except subprocess.TimeoutExpired:
            pod.proc.kill()  # the grace period is over
            await asyncio.to_thread(pod.proc.wait)
        await endpoint
        self.pods.pop(pod.name, None)
        self.gone.append(pod)
        await self.publish()

    async def _drained_hook(self, pod: BackendPod) -> None:
        """The preStop an app's pod would run: an httpGet-like call, bounded by the grace."""
        async with httpx.AsyncClient(trust_env=False, timeout=self.grace_s + 1) as client:
            response = await client.get(
                self.drained_url, params={"ip": pod.ip, "timeout": str(self.grace_s - 1)}
            )
        assert response.status_code in (200, 504), response.text

    async def _mark_terminating(self, pod: BackendPod, lag: float) -> None:
        await asyncio.sleep(lag)
        pod.terminating = True
        await self.publish()
        if self.behaviour == "unready":  # the readiness probe fails on its next period
            await asyncio.sleep(0.5)
            pod.serving = False
            await self.publish()

    async def settle(self) -> None:
        """Wait for every deletion started to finish."""
        await asyncio.gather(*self._terminations)
        self._terminations.clear()

    def kill_all(self) -> None:
        for pod in [*self.pods.values(), *self.gone]:
            if pod.proc.poll() is None:
                pod.proc.kill()
                pod.proc.wait()

    # --- the EndpointSlice --------------------------------------------------------------

    def endpoint_slice(self) -> dict[str, Any]:
        endpoints = [
            {
                "addresses": [pod.ip],
                "conditions": {
                    "ready": not pod.terminating,
                    "serving": pod.serving,
                    "terminating": pod.terminating,
                },
                "targetRef": {"kind": "Pod", "name": pod.name, "namespace": "default"},
            }
            for pod in sorted(self.pods.values(), key=lambda p: p.name)
        ]
        stamp = datetime.now(UTC).isoformat()
        return {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "backend-abc12",
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": "backend"},
                "annotations": {TRIGGER_TIME: stamp},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": self.port, "protocol": "TCP"}],
            "endpoints": endpoints,
        }

    async def publish(self) -> None:
        async with self._lock:
            done = self.apply(self.endpoint_slice())
            if done is not None:
                await done

    # --- the rollouts ---------------------------------------------------------------

    async def run(self, kind: str) -> None:
        """One rollout of `kind` (ROLLOUTS), from the replicas it starts with."""
        if kind == "surge" or kind == "single":
            for old in list(self.pods.values()):
                await self.start_pod()
                await asyncio.sleep(0.3)  # a Deployment moves on once the new pod is ready
                self.delete(old)
        elif kind == "scale-down":
            self.delete(next(iter(self.pods.values())))
        elif kind == "delete":
            self.delete(next(iter(self.pods.values())))
            await self.start_pod()
        elif kind == "lone-delete":
            (old,) = self.pods.values()
            successor = await self.start_pod(ready=False)  # its readiness probe not passed yet
            self.delete(old)
            await until(lambda: old.terminating, 10, "the old pod terminating")
            await asyncio.sleep(0.3)
            await self.make_ready(successor)
        else:
            raise ValueError(kind)
        await self.settle()


def replicas(kind: str) -> int:
    return 1 if kind in ("single", "lone-delete") else 3


async def load(url: str, stop: asyncio.Event, outcome: Outcome, worker: int) -> None:
    """Keep-alive GETs and POSTs with unique ids, in turn, until `stop`."""
    ids = itertools.count()
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        while not stop.is_set():
            for method in ("GET", "POST"):
                request_id = f"{worker}-{next(ids)}"
                outcome.sent[method] += 1
                try:
                    if method == "GET":
                        response = await client.get(url + "/")
                    else:
                        response = await client.post(
                            url + "/order", content=b"{}", headers={"x-id": request_id}
                        )
                    failure = None if response.status_code == 200 else str(response.status_code)
                    if failure:
                        failure += " " + response.text.strip()
                except httpx.HTTPError as exc:
                    failure = type(exc).__name__
                if failure is not None:
                    outcome.failed[method] += 1
                    outcome.errors[f"{method} {failure}"] += 1
                    if method == "POST":
                        outcome.failed_posts.add(request_id)
            await asyncio.sleep(0.005)


STREAM_CHUNKS = 15
"""A long response: 15 chunks of 64 bytes, one every 0.1 s."""


async def stream_load(url: str, stop: asyncio.Event, outcome: Outcome) -> None:
    """Long streaming GETs, one after another: each must arrive whole."""
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        while not stop.is_set():
            outcome.sent["STREAM"] += 1
            try:
                async with client.stream("GET", f"{url}/stream?chunks={STREAM_CHUNKS}") as response:
                    body = await response.aread()
                if response.status_code != 200:
                    failure: str | None = f"{response.status_code} {body.decode().strip()}"
                elif len(body) != STREAM_CHUNKS * 64:
                    failure = "cut short"
                else:
                    failure = None
            except httpx.HTTPError as exc:
                failure = "cut: " + type(exc).__name__
            if failure is not None:
                outcome.failed["STREAM"] += 1
                outcome.errors[f"STREAM {failure}"] += 1


WS_MESSAGES = 10


async def websocket_load(url: str, stop: asyncio.Event, outcome: Outcome) -> None:
    """WebSocket sessions of 10 echoed messages, 0.05 s apart, one after another. A session
    the app ends (1001, going away) is the app's choice: the client opens another."""
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            outcome.sent["WS"] += 1
            try:
                socket = await session.ws_connect(url.replace("http://", "ws://") + "/ws")
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome.failed["WS"] += 1
                outcome.errors[f"WS handshake {exc}"[:120]] += 1
                await asyncio.sleep(0.05)
                continue
            async with socket:
                for number in range(WS_MESSAGES):
                    await socket.send_str(str(number))
                    message = await socket.receive()
                    if message.type != aiohttp.WSMsgType.TEXT:
                        outcome.errors[f"WS ended by the app: {socket.close_code}"] += 1
                        break
                    await asyncio.sleep(0.05)


def executed(pods: list[BackendPod]) -> Counter[str]:
    found: Counter[str] = Counter()
    for pod in pods:
        if pod.record.exists():
            found.update(line for line in pod.record.read_text().splitlines() if line)
    return found


async def measure(rollout: Rollout, url: str, kind: str, clients: int = 4) -> Outcome:
    """Start the replicas, load them through `url`, roll them out once, stop the load (long
    streams and WebSockets only to HTTP/1 pods: the h2c app answers GETs and POSTs)."""
    for _ in range(replicas(kind)):
        await rollout.start_pod()
    await until(lambda: _served(url), 20, "the backends served through Envoy")
    outcome = Outcome()
    stop = asyncio.Event()
    workers = [asyncio.create_task(load(url, stop, outcome, n)) for n in range(clients)]
    if not rollout.h2c:
        workers.append(asyncio.create_task(stream_load(url, stop, outcome)))
        workers.append(asyncio.create_task(websocket_load(url, stop, outcome)))
    await asyncio.sleep(1.0)
    await rollout.run(kind)
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*workers)
    outcome.executed = executed([*rollout.pods.values(), *rollout.gone])
    outcome.hook_waits = rollout.hook_waits
    return outcome


async def _served(url: str) -> bool:
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=2) as client:
            return (await client.get(url + "/")).status_code == 200
    except httpx.HTTPError:
        return False


def app_objects(h2c: bool = False) -> list[dict[str, Any]]:
    """Service `backend` and an Ingress sending everything to it (its slice: the rollout's);
    with `h2c`, its port's appProtocol says Envoy speaks HTTP/2 to it."""
    backend = service("backend", [("http", 80)])
    if h2c:
        backend["spec"]["ports"][0]["appProtocol"] = "kubernetes.io/h2c"
    return [backend, ingress("shop", [rule(None, ("/", "Prefix", "backend", 80))])]


def from_manifests(
    workdir: Path, policy: str | None = None, h2c: bool = False
) -> tuple[XdsServer, Apply]:
    """An xds-server over a manifests directory (with an anchor's policy: anchor_policy.py),
    and how the rollout writes its EndpointSlice there."""
    manifests = workdir / "manifests"
    manifests.mkdir()
    write_manifests(manifests, "app", app_objects(h2c))
    server = XdsServer(workdir, manifests)
    if policy is not None:
        server.args[:3] = [sys.executable, "-m", "bench.lab.anchor_policy", policy]

    def apply(obj: dict[str, Any]) -> None:
        write_manifests(manifests, "slice", [obj])

    return server, apply


async def through_envoy(
    workdir: Path,
    server: XdsServer,
    apply: Apply,
    behaviour: str,
    kind: str,
    h2c: bool = False,
) -> tuple[Outcome, str]:
    """One rollout through a real Envoy fed by `server`: its outcome, the server's metrics."""
    seed = sum(map(ord, behaviour + kind))
    drained = f"http://127.0.0.1:{server.http_port}/drained"
    rollout = Rollout(workdir, apply, free_port(), behaviour, seed, drained, h2c)
    envoy: XdsEnvoy | None = None
    try:
        await server.start()
        envoy = await XdsEnvoy(workdir, server, "front").start()
        outcome = await measure(rollout, envoy.url("").rstrip("/"), kind)
        return outcome, await server.metrics()
    finally:
        rollout.kill_all()
        if envoy is not None:
            envoy.stop()
        server.stop()
