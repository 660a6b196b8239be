"""`shutdown-manager run -- envoy ...`: Envoy as a child, drained on SIGTERM, hot-restarted
on SIGHUP, never orphaned."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from bench.lab.backend import Backend
from bench.lab.clients import Tally, http_client, steady_load
from bench.lab.envoy import Envoy, free_port
from bench.lab.sidecar import COMMAND

pytestmark = pytest.mark.timeout(90)


class Supervised:
    """`shutdown-manager run` around a real Envoy, its log in a file."""

    def __init__(self, envoy: Envoy, *flags: str, hot_restart: bool = True) -> None:
        self.envoy = envoy
        self.port = free_port()
        self.log_path = envoy.workdir.parent / "run.log"
        self.args = [
            *COMMAND, "run",
            "--listen", f"127.0.0.1:{self.port}",
            "--admin-address", envoy.admin_address,
            "--control-socket", str(envoy.workdir.parent / "sm.sock"),
            "--log-format", "json",
            "--ignore-listener", "probe",
            *flags,
            "--", *envoy.argv(hot_restart=hot_restart),
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> Supervised:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=log)
        await self.envoy.wait_live()
        return self

    def envoys(self) -> list[psutil.Process]:
        assert self.proc is not None
        return [p for p in psutil.Process(self.proc.pid).children(recursive=True)]

    async def wait_exit(self, timeout: float = 30) -> int:
        assert self.proc is not None
        for _ in range(int(timeout * 20)):
            if self.proc.poll() is not None:
                return self.proc.returncode
            await asyncio.sleep(0.05)
        raise TimeoutError(self.log_path.read_text())

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            for child in self.envoys():
                child.kill()
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def supervised() -> Iterator[list[Supervised]]:
    started: list[Supervised] = []
    yield started
    for item in started:
        item.kill()


async def start(
    started: list[Supervised], workdir: Path, backend: Backend, *flags: str, **kw: object
) -> Supervised:
    envoy = Envoy(
        workdir=workdir / "envoy",
        backend_port=backend.port,
        drain_time_s=2,
        extra_args=["--parent-shutdown-time-s", "4"],
    )
    runner = Supervised(envoy, *flags, **kw)  # type: ignore[arg-type]
    started.append(runner)
    return await runner.start()


async def test_sigterm_drains_then_stops_envoy_and_exits_zero(
    workdir: Path, backend: Backend, supervised: list[Supervised]
) -> None:
    runner = await start(supervised, workdir, backend, "--min-drain-duration", "0.5s")
    envoy_pids = [p.pid for p in runner.envoys()]
    assert envoy_pids
    async with http_client() as client:
        assert (await client.get(runner.envoy.url())).status_code == 200
    assert runner.proc is not None
    runner.proc.send_signal(signal.SIGTERM)
    assert await runner.wait_exit() == 0
    assert not any(psutil.pid_exists(pid) for pid in envoy_pids), "Envoy must be stopped"
    log = runner.log_path.read_text()
    assert "drain quiescent" in log or "drain drained" in log


async def test_exit_status_says_the_deadline_passed(
    workdir: Path, backend: Backend, supervised: list[Supervised]
) -> None:
    runner = await start(
        supervised, workdir, backend, "--min-drain-duration", "0.2s", "--drain-timeout", "1s",
        "--quiet-period", "0",
    )  # fmt: skip
    async with http_client() as client:
        assert (await client.get(runner.envoy.url())).status_code == 200
        assert runner.proc is not None
        runner.proc.send_signal(signal.SIGTERM)
        assert await runner.wait_exit() == 3


async def test_envoy_dying_on_its_own_ends_the_supervisor_with_its_status(
    workdir: Path, backend: Backend, supervised: list[Supervised]
) -> None:
    runner = await start(supervised, workdir, backend)
    (envoy,) = runner.envoys()
    envoy.send_signal(signal.SIGKILL)
    assert await runner.wait_exit() == 128 + signal.SIGKILL
    assert "exited on its own" in runner.log_path.read_text()


async def test_killed_supervisor_takes_envoy_with_it(
    workdir: Path, backend: Backend, supervised: list[Supervised]
) -> None:
    runner = await start(supervised, workdir, backend)
    (envoy,) = runner.envoys()
    assert runner.proc is not None
    runner.proc.kill()
    runner.proc.wait()
    gone, _ = psutil.wait_procs([envoy], timeout=5)
    assert gone, "an Envoy must never outlive its supervisor"


async def test_sighup_hot_restarts_with_no_failed_request(
    workdir: Path, backend: Backend, supervised: list[Supervised]
) -> None:
    runner = await start(supervised, workdir, backend, hot_restart=True)
    (first,) = runner.envoys()
    stop, tally = asyncio.Event(), Tally()
    load = [asyncio.create_task(steady_load(runner.envoy.url(), stop, tally)) for _ in range(3)]
    await asyncio.sleep(0.5)
    assert runner.proc is not None
    runner.proc.send_signal(signal.SIGHUP)
    try:
        await runner.envoy.wait_live(epoch=1)
    except TimeoutError:
        async with runner.envoy.admin_http() as admin:
            info = (await admin.get("/server_info")).text[:400]
        pytest.fail(info + runner.log_path.read_text()[-1500:])
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(*load)
    assert tally.failed == 0, tally.errors
    assert tally.ok > 50
    gone, _ = psutil.wait_procs([first], timeout=15)
    assert gone, "the old epoch drains and exits on its own"
    assert len(runner.envoys()) == 1
    async with httpx.AsyncClient(trust_env=False) as client:
        health = await client.get(f"http://127.0.0.1:{runner.port}/healthz")
    assert health.status_code == 200
    runner.proc.send_signal(signal.SIGTERM)
    assert await runner.wait_exit() == 0


def test_no_envoy_command_is_a_one_line_error() -> None:
    result = subprocess.run(
        [*COMMAND, "run", "--listen", "127.0.0.1:0"], capture_output=True, text=True, check=False,
        env=os.environ | {"TMPDIR": "/tmp"}, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "shutdown-manager run: error: no Envoy command given: run [flags] -- envoy -c config.yaml"
    ]
