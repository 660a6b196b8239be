"""`envoy-gateway`, our drop-in for Envoy Gateway's shutdown manager image: it takes Envoy
Gateway's command lines as they are (Go durations, `--flag=value` and `--flag value`, their
defaults), refuses by name what it does not implement, `/shutdown/ready` answers 500 after the
ready timeout, and the hook's exit codes are ours."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.lab.envoy import free_port
from envoy_lifecycle.cmdline import go_duration
from shutdown_manager.envoy_gateway import DEFAULTS, build_parser
from tests.harness.cli import run_cli

pytestmark = pytest.mark.timeout(60)

GATEWAY = [sys.executable, "-m", "shutdown_manager.envoy_gateway"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("60s", 60), ("1m30s", 90), ("1.5h", 5400), ("300ms", 0.3), ("0", 0), ("2h45m", 9900),
     ("1.s", 1), (".5s", 0.5), ("+5m", 300), ("-1s", -1), ("100us", 1e-4), ("1\u00b5s", 1e-6)],
)  # fmt: skip
def test_go_durations_are_read_as_time_parse_duration_reads_them(text: str, seconds: float) -> None:
    assert go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "says"),
    [("60", "missing unit"), ("1m5", "missing unit"), ("5x", "unknown unit"),
     ("5mx", "unknown unit"), ("", "invalid"), ("s", "invalid"), (".s", "invalid")],
)  # fmt: skip
def test_what_go_refuses_is_refused(text: str, says: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=says):
        go_duration(text)


@pytest.mark.parametrize(
    "argv",
    [
        ["envoy", "shutdown-manager"],
        ["envoy", "shutdown-manager", "--ready-timeout=70s"],
        ["envoy", "shutdown-manager", "--ready-timeout", "1m10s"],
        ["envoy", "shutdown"],
        ["envoy", "shutdown", "--drain-timeout=60s", "--min-drain-duration=10s",
         "--exit-at-connections=0", "--health-check-failure-delay=5s"],
        ["envoy", "shutdown", "--drain-timeout", "1m", "--exit-at-connections", "3"],
    ],
)  # fmt: skip
def test_envoy_gateways_command_lines_parse(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert args.command == argv[1]


def test_defaults_are_envoy_gateways() -> None:
    manager = build_parser().parse_args(["envoy", "shutdown-manager"])
    assert manager.ready_timeout == 610
    assert manager.listen == ("0.0.0.0", 19002)
    assert str(manager.admin_address) == "http://127.0.0.1:19000"
    assert (DEFAULTS.drain_timeout, DEFAULTS.min_drain_duration) == (60, 10)
    assert DEFAULTS.exit_at_connections == 0
    assert DEFAULTS.health_check_failure_delay == 0


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["envoy", "shutdown", "--drain-timeout=60"], "missing unit"),
        (["envoy", "shutdown", "--check-interval=5s"], "argument '--check-interval"),
        (["envoy", "shutdown", "--drain-timout=5s"], "unknown flag or argument '--drain-timout"),
        (["envoy", "shutdown", "--drain"], "unknown flag or argument '--drain'"),
        (["envoy", "shutdown", "extra"], "unknown flag or argument 'extra'"),
        (["envoy", "shutdown-manager", "--ready-timeout=0s"], "must be positive"),
        (["envoy", "shutdown", "--min-drain-duration=90s"], "between 0 and --drain-timeout"),
        (["envoy", "shutdown", "--exit-at-connections=-1"], "whole number"),
        (["server", "--config-path", "/config/envoy-gateway.yaml"], "`server` is Envoy Gateway's"),
        (["certgen"], "`certgen` is Envoy Gateway's"),
        (["envoy", "init"], "`envoy init` is not supported"),
    ],
)  # fmt: skip
def test_what_is_not_implemented_is_an_error_that_names_it(argv: list[str], says: str) -> None:
    result = run_cli("shutdown_manager.envoy_gateway", *argv)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert says in lines[0]


@pytest.fixture
def manager(workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`envoy shutdown-manager --ready-timeout=1s` with no Envoy behind it."""
    port = free_port()
    proc = subprocess.Popen(
        [*GATEWAY, "envoy", "shutdown-manager", "--ready-timeout=1s",
         "--listen", f"127.0.0.1:{port}", "--admin-address", f"http://127.0.0.1:{free_port()}",
         "--control-socket", str(workdir / "c.sock"), "--ready-file", str(workdir / "ready")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    proc.port = port  # type: ignore[attr-defined]
    yield proc
    proc.kill()
    proc.wait(timeout=10)


async def _until_up(url: str) -> None:
    async with httpx.AsyncClient(trust_env=False) as client:
        for _ in range(200):
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise TimeoutError(url)


async def test_shutdown_ready_answers_500_after_the_ready_timeout(
    manager: subprocess.Popen[bytes],
) -> None:
    base = f"http://127.0.0.1:{manager.port}"  # type: ignore[attr-defined]
    await _until_up(f"{base}/healthz")
    began = time.monotonic()
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        response = await client.get(f"{base}/shutdown/ready")
    assert response.status_code == 500
    assert time.monotonic() - began >= 1.0
    assert response.json()["released"] is False


async def test_the_hook_exits_4_when_envoy_is_gone(
    manager: subprocess.Popen[bytes], workdir: Path
) -> None:
    """Exit codes are ours (Envoy Gateway's hook exits 0 whatever happened)."""
    base = f"http://127.0.0.1:{manager.port}"  # type: ignore[attr-defined]
    await _until_up(f"{base}/healthz")
    hook = await asyncio.create_subprocess_exec(
        *GATEWAY, "envoy", "shutdown", "--drain-timeout=3s", "--min-drain-duration=0s",
        "--control-socket", str(workdir / "c.sock"), "--ready-file", str(workdir / "ready"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(hook.communicate(), 20)
    assert hook.returncode == 4, out.decode()
    assert b"--drain-timeout 3s" in out, "the sidecar drained with the hook's flags"
