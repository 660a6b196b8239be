"""`shutdown-manager` run as a real process, the way the kubelet runs it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.lab.envoy import free_port

COMMAND = [sys.executable, "-m", "shutdown_manager"]
GATEWAY = (sys.executable, "-m", "shutdown_manager.envoy_gateway", "envoy")
"""Envoy Gateway's command, our drop-in: `shutdown-manager` (the sidecar), `shutdown` (hook)."""


class SidecarProcess:
    """`shutdown-manager serve` with its log captured to a file."""

    def __init__(
        self,
        workdir: Path,
        admin_address: str,
        *flags: str,
        env: dict[str, str] | None = None,
        command: tuple[str, ...] = (*COMMAND, "serve"),
    ) -> None:
        """`command`: another way to start it (Envoy Gateway's drop-in, GATEWAY_SERVE)."""
        self.workdir = workdir
        self.env = {**os.environ, **(env or {})}
        self.port = free_port()
        self.control_socket = workdir / "sm.sock"
        self.log_path = workdir / f"serve-{self.port}.log"
        self.args = [
            *command,
            "--listen", f"127.0.0.1:{self.port}",
            "--admin-address", admin_address,
            "--control-socket", str(self.control_socket),
            "--log-format", "json",
            *flags,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 15.0) -> SidecarProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.args, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=self.env
        )
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"serve exited: {self.log()}")
                try:
                    if (await client.get(f"{self.url}/healthz")).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
        raise TimeoutError(f"serve did not come up: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError("serve did not exit")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


async def run_hook(
    *flags: str, timeout: float = 60.0, command: tuple[str, ...] = (*COMMAND, "drain")
) -> tuple[int, str]:
    """`shutdown-manager drain` (or `command`) as the kubelet's exec hook runs it: returns
    (status, output)."""
    proc = await asyncio.create_subprocess_exec(
        *command, *flags, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    finally:  # timed out, or the test gave up on it: never left running
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode()
