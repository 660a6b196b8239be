"""The pod runner itself (bench/lab/pod.py) keeps the kubelet's order, with small processes:
init containers, native sidecars and their startupProbe, restarts with the back-off, and the
termination order and shared grace period of the kubelet's code (KEP-753, KEP-4438)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.lab.envoy import free_port
from bench.lab.pod import Container, ExecHook, HttpProbe, Pod, SidecarHooks

pytestmark = pytest.mark.timeout(60)

FOREVER = "import time\nwhile True: time.sleep(1)"
BACK_OFF = 2.0
"""The crash-loop back-off of the restart test (the kubelet's is 10 s)."""
STUBBORN = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + FOREVER
"""Ignores SIGTERM: only SIGKILL ends it."""


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def sleeper(name: str, hook: float | None = None, **kw: object) -> Container:
    """Runs until signalled; its preStop hook (if any) sleeps `hook` seconds."""
    pre_stop = ExecHook(python(f"import time; time.sleep({hook})")) if hook else None
    return Container(name, python(FOREVER), pre_stop=pre_stop, **kw)  # type: ignore[arg-type]


def sidecar(name: str, hook: float | None = None, **kw: object) -> Container:
    return sleeper(name, hook, restart_policy="Always", **kw)


def at(pod: Pod, container: str, what: str) -> float:
    return next(s.at for s in pod.timeline if s.container == container and s.what == what)


@pytest.fixture
def started() -> Iterator[list[Pod]]:
    pods: list[Pod] = []
    yield pods
    for pod in pods:
        pod.kill()


async def run(started: list[Pod], pod: Pod) -> Pod:
    started.append(pod)
    await pod.start()
    return pod


async def test_a_native_sidecar_starts_after_the_init_before_it_and_gates_the_next(
    started: list[Pod], tmp_path: Path
) -> None:
    port = free_port()
    server = (
        "import time, http.server as h\ntime.sleep(0.5)\n"
        f"h.HTTPServer(('127.0.0.1', {port}), h.SimpleHTTPRequestHandler).serve_forever()"
    )
    setup = Container("setup", python("import time; time.sleep(0.3)"))
    proxy = Container(
        "proxy", python(server), restart_policy="Always",
        startup_probe=HttpProbe(port=port, path="/", period=0.05), log_path=tmp_path / "log",
    )  # fmt: skip
    pod = await run(started, Pod("p", [sleeper("app")], 5, [setup, proxy]))
    assert at(pod, "setup", "completed") <= at(pod, "proxy", "started")
    assert at(pod, "proxy", "started") + 0.5 <= at(pod, "proxy", "startup probe passed")
    assert at(pod, "proxy", "startup probe passed") <= at(pod, "app", "started")


async def test_a_failed_init_container_is_run_again_before_anything_else_starts(
    started: list[Pod], tmp_path: Path
) -> None:
    flag = tmp_path / "ran"
    code = (
        f"import pathlib, sys\np = pathlib.Path({str(flag)!r})\n"
        "ok = p.exists()\np.touch()\nsys.exit(0 if ok else 1)"
    )
    setup = Container("setup", python(code))
    pod = await run(started, Pod("p", [sleeper("app")], 5, [setup, sidecar("s")]))
    steps = [(s.container, s.what) for s in pod.timeline]
    assert steps[:4] == [("setup", "started"), ("setup", "exited 1"), ("setup", "started"),
                         ("setup", "completed")]  # fmt: skip
    assert setup.restarts == 1


async def test_a_sidecar_that_dies_while_the_pod_runs_is_restarted_with_the_back_off(
    started: list[Pod],
) -> None:
    side = sidecar("s")
    pod = await run(started, Pod("p", [sleeper("app")], 5, [side], back_off=BACK_OFF))
    for restarts in (1, 2):
        assert side.proc is not None
        side.proc.kill()
        for _ in range(int(BACK_OFF * 100) + 300):
            if side.restarts == restarts and side.running:
                break
            await asyncio.sleep(0.01)
        assert side.restarts == restarts
    exits = [s.at for s in pod.timeline if s.container == "s" and s.what.startswith("exited")]
    restarted = [s.at for s in pod.timeline if s.container == "s" and s.what == "restarted"]
    assert restarted[0] - exits[0] < BACK_OFF, "the first restart does not wait"
    assert restarted[1] - exits[1] >= BACK_OFF, "the second waits for the back-off"


@pytest.mark.parametrize("hooks", ["at-deletion", "in-turn"])
async def test_sidecars_stop_after_the_regular_containers_in_reverse_order(
    hooks: SidecarHooks, started: list[Pod]
) -> None:
    first, second = sidecar("first", hook=0.2), sidecar("second", hook=0.2)
    app = sleeper("app", hook=0.8)
    pod = await run(started, Pod("p", [app], 10, [first, second], sidecar_hooks=hooks))
    report = await pod.delete()
    r = report.containers
    assert not report.killed
    assert all(r[n].hook_result == "ok" for n in ("first", "second", "app"))
    assert r["app"].sigterm_at is not None
    assert r["app"].hook_ended is not None
    assert r["app"].sigterm_at >= r["app"].hook_ended, "SIGTERM after its own hook"
    for name in ("first", "second"):
        hook_started, sigterm_at = r[name].hook_started, r[name].sigterm_at
        assert hook_started is not None
        assert sigterm_at is not None
        if hooks == "at-deletion":  # the kubelet: every hook at once, Envoy's still running
            assert hook_started < r["app"].hook_ended
        assert sigterm_at >= r["app"].exited_at  # type: ignore[operator]
    assert r["first"].sigterm_at >= r["second"].exited_at  # type: ignore[operator]
    if hooks == "in-turn":
        assert r["second"].hook_started >= r["app"].exited_at  # type: ignore[operator]


async def test_a_sidecar_that_dies_during_termination_is_restarted_until_its_turn(
    started: list[Pod],
) -> None:
    side, app = sidecar("s"), sleeper("app", hook=1.0)
    pod = await run(started, Pod("p", [app], 10, [side]))
    deleting = asyncio.create_task(pod.delete())
    await asyncio.sleep(0.3)
    assert side.proc is not None
    side.proc.kill()
    report = await deleting
    assert side.restarts == 1, "restarted while Envoy's hook still ran (KEP-4438)"
    assert report.containers["s"].sigterm_at >= report.containers["app"].exited_at  # type: ignore[operator]


async def test_the_grace_period_is_shared_and_sigkill_comes_at_least_2_s_after_sigterm(
    started: list[Pod],
) -> None:
    app = Container(
        "app", python(STUBBORN), pre_stop=ExecHook(python("import time; time.sleep(60)"))
    )
    side = Container("s", python(STUBBORN), restart_policy="Always")
    pod = await run(started, Pod("p", [app], 1.0, [side]))
    report = await pod.delete()
    r = report.containers
    assert r["app"].hook_result == "killed at deadline"
    assert r["app"].sigterm_at >= report.deleted_at + 1.0  # type: ignore[operator]
    for name in ("app", "s"):
        assert r[name].sigkill_at is not None, f"{name} ignores SIGTERM"
        assert r[name].sigkill_at - r[name].sigterm_at >= 2.0  # type: ignore[operator]
    # The deadline ends the sidecar's wait for its turn too: it is stopped beside Envoy.
    assert r["s"].sigterm_at >= report.deleted_at + 1.0  # type: ignore[operator]
    assert set(report.killed) == {"app", "s"}


async def test_a_sidecar_failing_its_startup_probe_is_restarted_and_holds_the_pod_back(
    started: list[Pod],
) -> None:
    probe = HttpProbe(port=free_port(), path="/", period=0.05, failure_threshold=3)
    side = sidecar("s", startup_probe=probe)
    pod = Pod("p", [sleeper("app")], 5, [side], back_off=0.2)
    started.append(pod)
    starting = asyncio.create_task(pod.start())
    for _ in range(200):
        if side.restarts >= 2:
            break
        await asyncio.sleep(0.02)
    starting.cancel()
    steps = [(s.container, s.what) for s in pod.timeline]
    assert steps.count(("s", "startup probe failed")) >= 2
    assert side.restarts >= 2
    assert all(container != "app" for container, _ in steps), "nothing after it starts"
