"""Drain events reach the Kubernetes API through the real client, and never block the drain.

The API server here is a FAKE (no Kubernetes can run on this machine): an aiohttp app that
records event POSTs, or a socket that never answers.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bench.lab.envoy import Envoy
from shutdown_manager.address import parse_admin_address
from shutdown_manager.admin import AdminClient
from shutdown_manager.drain import DrainEngine, Outcome
from shutdown_manager.kube_api import REQUEST_TIMEOUT, PodIdentity
from shutdown_manager.kube_events import KubeEvents
from shutdown_manager.policy import DrainPolicy

pytestmark = pytest.mark.timeout(60)


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "fake", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    return path


async def drain_with_events(envoy: Envoy, events: KubeEvents) -> tuple[Outcome, float]:
    async with AdminClient(parse_admin_address(envoy.admin_address)) as admin:
        policy = DrainPolicy(min_drain_duration=0.2, drain_timeout=5)
        started = time.monotonic()
        report = await DrainEngine(admin, policy, [events.observe]).run()
        took = time.monotonic() - started
        await events.flush()
    return report.outcome, took


async def test_events_are_posted_for_the_pod(
    envoy: Envoy, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    posted: list[dict[str, Any]] = []

    async def create(request: web.Request) -> web.Response:
        body = await request.json()
        posted.append(body | {"_namespace": request.match_info["ns"]})
        return web.json_response(body, status=201)

    app = web.Application()
    app.router.add_post("/api/v1/namespaces/{ns}/events", create)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(workdir / "kc", f"http://127.0.0.1:{port}")))
    try:
        outcome, _ = await drain_with_events(envoy, KubeEvents(PodIdentity("envoy-abc", "ingress")))
    finally:
        await runner.cleanup()
    assert outcome is Outcome.DRAINED
    assert [event["reason"] for event in posted] == ["DrainStarted", "DrainCompleted"]
    assert all(event["involvedObject"]["name"] == "envoy-abc" for event in posted)
    assert all(event["_namespace"] == "ingress" for event in posted)
    assert "0 connections left" in posted[1]["message"]


async def test_a_hung_api_server_never_delays_the_drain(
    envoy: Envoy, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(workdir / "kc", f"http://127.0.0.1:{port}")))
    try:
        outcome, took = await drain_with_events(
            envoy, KubeEvents(PodIdentity("envoy-abc", "ingress"))
        )
    finally:
        for writer in held:
            writer.close()
        server.close()
    assert outcome is Outcome.DRAINED
    assert took < REQUEST_TIMEOUT, "event posting must not hold the drain (a post waits that)"


def test_events_are_off_and_the_client_never_imported_outside_a_pod() -> None:
    code = (
        "import sys; from shutdown_manager import cli, server; "
        "from shutdown_manager.kube_api import PodIdentity; "
        "from shutdown_manager.kube_events import KubeEvents; "
        "print(KubeEvents(PodIdentity.from_env()).enabled, 'kubernetes' in sys.modules)"
    )
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.split()
    assert out == ["False", "False"]
