"""User mistakes: one line on stderr, a non-zero status, never a traceback."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from envoy_lifecycle.cmdline import duration
from tests.harness.cli import run_cli

pytestmark = pytest.mark.timeout(60)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("shutdown_manager", *args)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["serve", "--drain-timeout", "soon"], "not a duration"),
        (["serve", "--admin-address", "ftp://envoy:9901"], "admin address must be"),
        (["serve", "--admin-address", "unix://relative.sock"], "absolute path"),
        (["serve", "--listen", "nowhere"], "expected HOST:PORT"),
        (["serve", "--listen", "0.0.0.0:99999"], "expected HOST:PORT"),
        (["serve", "--exit-at-connections", "-1"], "whole number"),
        (["drain", "--min-drain-duration", "30s", "--drain-timeout", "10s"], "between 0 and"),
        (["drain", "--poll-interval", "10ms"], "at least 0.1"),
        (["serve", "--no-such-flag"], "unrecognized arguments"),
        (["drain", "--ready-file", "/nonexistent/dir/ready"], "is not an existing directory"),
        (["serve", "--ready-file", "/nonexistent/dir/ready"], "is not an existing directory"),
        (["serve", "--ready-file", "/tmp"], "is a directory"),
        (["serve", "--ready-file", f"/tmp/{'x' * 300}"], "component longer than 255"),
        (["drain", "--ready-file", f"/tmp/{'x' * 300}/ok"], "component longer than 255"),
        (["serve", "--control-socket", f"/tmp/{'x' * 300}"], "component longer than 255"),
        (["serve", "--control-socket", f"/tmp/{'x' * 120}.sock"], "107 bytes at most"),
        (["drain", "--control-socket", f"/tmp/{'x' * 120}.sock"], "107 bytes at most"),
        (["run", "--control-socket", f"/tmp/{'x' * 120}.sock"], "107 bytes at most"),
        (["serve", "--admin-address", f"unix:///tmp/{'x' * 120}.sock"], "107 bytes at most"),
        ([], "required"),
    ],
)
def test_bad_flags_give_one_line_and_exit_2(args: list[str], says: str) -> None:
    result = run(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert says in lines[0]
    assert "Traceback" not in result.stderr


def test_port_in_use_is_one_line_and_exit_1(workdir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(
            "serve", "--listen", f"127.0.0.1:{port}", "--control-socket", str(workdir / "c.sock")
        )
    assert result.returncode == 1
    assert "cannot listen on" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


def test_missing_control_socket_directory_is_one_line_and_exit_1(workdir: Path) -> None:
    result = run("serve", "--listen", "127.0.0.1:0", "--control-socket", str(workdir / "no/c.sock"))
    assert result.returncode == 1
    assert "does not exist" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


def test_help_explains_every_flag_with_its_default() -> None:
    for command in ("serve", "drain"):
        text = run(command, "--help").stdout
        for flag in ("--drain-timeout", "--min-drain-duration", "--exit-at-connections"):
            assert flag in text
        assert text.count("(default:") >= 10


@pytest.mark.parametrize(
    ("text", "seconds"), [("25", 25.0), ("25s", 25.0), ("500ms", 0.5), ("5m", 300.0), ("1.5s", 1.5)]
)
def test_durations(text: str, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("binary", ["/nonexistent-binary", "/etc/hostname", "/tmp"])
def test_an_envoy_command_that_cannot_start_is_one_line_and_exit_2(
    workdir: Path, binary: str
) -> None:
    result = run(
        "run", "--listen", "127.0.0.1:0", "--control-socket", str(workdir / "c.sock"),
        "--admin-address", f"unix://{workdir}/admin.sock", "--", binary,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"cannot start {binary}:" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("after", [0.05, 0.2, 0.5])
def test_ctrl_c_while_starting_is_no_traceback(workdir: Path, after: float) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shutdown_manager", "serve", "--listen", "127.0.0.1:0",
         "--control-socket", str(workdir / "c.sock"), "--admin-address",
         f"unix://{workdir}/admin.sock", "--drain-timeout", "2s", "--min-drain-duration", "0"],
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: a job started in the background of a script (CI) inherits
        # SIGINT ignored, and Python then leaves it ignored until serve installs its handler.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        time.sleep(after)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in stderr
    assert "KeyboardInterrupt" not in stderr
