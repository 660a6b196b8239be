"""`shutdown-manager run -- envoy ARGS`: Envoy as a child, where no kubelet calls hooks.

For VMs, systemd units and local runs. It serves the same HTTP endpoints and control socket
as `serve`, and adds what the kubelet would otherwise do:

* SIGTERM / SIGINT: drain with the same engine and policy, then SIGTERM Envoy, wait for it,
  and exit with the drain's status (0 drained, 3 deadline passed, 4 Envoy gone).
* SIGHUP: hot restart. Start the next `--restart-epoch` with the same base id, wait until it
  is LIVE, and let the old epoch drain and exit on its own (killed if it overstays).
* Envoy dying on its own: log it and exit with Envoy's status (128+N for signal N).

No Envoy outlives the supervisor: children get SIGKILL if the supervisor dies (Linux
PR_SET_PDEATHSIG), and on exit psutil sweeps the process tree for anything left.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from shutdown_manager.admin import AdminError
from shutdown_manager.logs import get_logger
from shutdown_manager.server import ServeConfig, Sidecar

LIVE_TIMEOUT = 60.0
"""Seconds a new epoch may take to report LIVE before the hot restart is given up."""

STOP_TIMEOUT = 10.0
"""Seconds Envoy gets to exit after SIGTERM before SIGKILL."""

PARENT_MARGIN = 5.0
"""Seconds past `--parent-shutdown-time-s` before an old epoch that has not exited is killed."""

ENVOY_DEFAULT_PARENT_SHUTDOWN = 900.0
"""Envoy's own default for `--parent-shutdown-time-s`."""

log = get_logger("run")


class EnvoyCommandError(ValueError):
    """The Envoy command line cannot be supervised as given."""


def _flag_value(args: list[str], flag: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _without(args: list[str], flags: Collection[str], switches: Collection[str] = ()) -> list[str]:
    """Drop `flag value`, `flag=value` and bare switches the supervisor manages itself."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in flags:
            skip = True
        elif arg.split("=", 1)[0] in flags or arg in switches:
            continue
        else:
            kept.append(arg)
    return kept


@dataclass
class EnvoyCommand:
    """The user's Envoy command line, and how each restart epoch's differs from it."""

    argv: list[str]
    runtime_dir: Path
    base_id: int | None = None
    hot_restart: bool = True
    parent_shutdown: float = ENVOY_DEFAULT_PARENT_SHUTDOWN
    _base: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, argv: list[str], runtime_dir: Path) -> EnvoyCommand:
        if not argv:
            raise EnvoyCommandError("no Envoy command given: run [flags] -- envoy -c config.yaml")
        base_id = _flag_value(argv, "--base-id")
        parent = _flag_value(argv, "--parent-shutdown-time-s")
        try:
            command = cls(
                argv=argv,
                runtime_dir=runtime_dir,
                base_id=int(base_id) if base_id is not None else None,
                hot_restart="--disable-hot-restart" not in argv,
                parent_shutdown=float(parent) if parent else ENVOY_DEFAULT_PARENT_SHUTDOWN,
            )
        except ValueError as exc:
            raise EnvoyCommandError(f"bad Envoy flag value: {exc}") from None
        command._base = _without(
            argv,
            {"--restart-epoch", "--base-id", "--base-id-path"},
            {"--use-dynamic-base-id"},
        )
        return command

    @property
    def base_id_path(self) -> Path:
        return self.runtime_dir / "envoy-base-id"

    def for_epoch(self, epoch: int) -> list[str]:
        args = list(self._base)
        if not self.hot_restart:
            return args
        if self.base_id is None:
            # Epoch 0 picks a free base id and tells us; later epochs must reuse it.
            return [*args, "--use-dynamic-base-id", "--base-id-path", str(self.base_id_path)]
        return [*args, "--base-id", str(self.base_id), "--restart-epoch", str(epoch)]

    def learn_base_id(self) -> None:
        if self.hot_restart and self.base_id is None and self.base_id_path.exists():
            text = self.base_id_path.read_text().strip()
            if text:
                self.base_id = int(text)


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec hook that makes the child get SIGKILL when the supervisor dies (Linux)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return hook


def exit_status(returncode: int) -> int:
    """A shell-style status: the exit code, or 128+N for a death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


class Supervisor:
    def __init__(self, config: ServeConfig, envoy_argv: list[str]) -> None:
        self._runtime = tempfile.TemporaryDirectory(prefix="shutdown-manager-")
        self.command = EnvoyCommand.parse(envoy_argv, Path(self._runtime.name))
        self.sidecar = Sidecar(config)
        self.epoch = 0
        self.current: asyncio.subprocess.Process | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._hup = asyncio.Event()

    # -- phases ---------------------------------------------------------------

    async def run(self) -> int:
        await self.sidecar.startup(restore=False)
        try:
            self.current = await self._spawn(0)
            self._install_signals()
            return await self.main_loop()
        finally:
            await self.shutdown()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._hup.set)

    def _on_stop(self, sig: signal.Signals) -> None:
        if self._stop.is_set():
            log.warning("second %s: exiting without waiting for the drain", sig.name)
            self.sidecar.force_exit = True
        self._stop.set()

    async def main_loop(self) -> int:
        while True:
            assert self.current is not None
            died = asyncio.ensure_future(self.current.wait())
            stop = asyncio.ensure_future(self._stop.wait())
            hup = asyncio.ensure_future(self._hup.wait())
            await asyncio.wait({died, stop, hup}, return_when=asyncio.FIRST_COMPLETED)
            for waiter in (died, stop, hup):
                waiter.cancel()
            if self._stop.is_set():
                return await self._drain_and_stop()
            if self._hup.is_set():
                self._hup.clear()
                await self.hot_restart()
                continue
            status = exit_status(self.current.returncode or 0)
            log.error(
                "Envoy (epoch %d, pid %d) exited on its own with status %d",
                self.epoch,
                self.current.pid,
                status,
                extra={"fields": {"envoy_status": status, "epoch": self.epoch}},
            )
            return status

    async def _drain_and_stop(self) -> int:
        report = await self.sidecar.drain_before_exit()
        await self._stop_envoys()
        if report is None:
            return 1
        log.info(
            "Envoy stopped after drain %s", report.outcome.value,
            extra={"fields": {"exit_code": report.outcome.exit_code}},
        )  # fmt: skip
        return report.outcome.exit_code

    async def shutdown(self) -> None:
        await self._stop_envoys()
        for task in self._retiring:
            task.cancel()
        sweep_children()
        await self.sidecar.close()
        self._runtime.cleanup()

    # -- Envoy processes --------------------------------------------------------

    async def _spawn(self, epoch: int) -> asyncio.subprocess.Process:
        argv = self.command.for_epoch(epoch)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, preexec_fn=_die_with_parent()
            )
        except OSError as exc:  # not there, not executable, a directory, not a program
            raise EnvoyCommandError(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
        log.info(
            "started Envoy epoch %d (pid %d)", epoch, process.pid,
            extra={"fields": {"epoch": epoch, "pid": process.pid, "argv": argv}},
        )  # fmt: skip
        return process

    async def hot_restart(self) -> None:
        old = self.current
        assert old is not None
        if not self.command.hot_restart:
            log.warning("SIGHUP ignored: Envoy runs with --disable-hot-restart")
            return
        self.command.learn_base_id()
        if self.command.base_id is None:
            log.warning("SIGHUP ignored: Envoy has not reported its base id yet")
            return
        epoch = self.epoch + 1
        try:
            new = await self._spawn(epoch)
        except EnvoyCommandError as exc:  # the binary went away under us: keep serving
            log.error("hot restart to epoch %d failed: %s; epoch %d keeps serving", epoch, exc,
                      self.epoch)  # fmt: skip
            return
        if not await self._wait_live(new, epoch):
            log.error("hot restart to epoch %d failed: epoch %d keeps serving", epoch, self.epoch)
            await _terminate(new)
            return
        log.info(
            "hot restart: epoch %d is LIVE; epoch %d drains and exits on its own", epoch, self.epoch
        )
        self.current, self.epoch = new, epoch
        task = asyncio.create_task(self._retire(old, self.epoch - 1))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _wait_live(self, process: asyncio.subprocess.Process, epoch: int) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LIVE_TIMEOUT
        while loop.time() < deadline and process.returncode is None and not self._stop.is_set():
            with contextlib.suppress(AdminError):
                info = await self.sidecar.admin.server_info()
                if info.restart_epoch == epoch and info.state == "LIVE":
                    return True
            await asyncio.sleep(0.1)
        return False

    async def _retire(self, process: asyncio.subprocess.Process, epoch: int) -> None:
        try:
            await asyncio.wait_for(process.wait(), self.command.parent_shutdown + PARENT_MARGIN)
            log.info("epoch %d exited (status %d)", epoch, exit_status(process.returncode or 0))
        except TimeoutError:
            log.warning("epoch %d overstayed --parent-shutdown-time-s: killing it", epoch)
            await _terminate(process)

    async def _stop_envoys(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        processes = [p for p in _live_children() if p is not None]
        if self.current is not None and self.current.returncode is None:
            await _terminate(self.current)
        for process in processes:
            with contextlib.suppress(psutil.Error):
                process.terminate()
        psutil.wait_procs(processes, timeout=STOP_TIMEOUT)


async def _terminate(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()


def _live_children() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def sweep_children() -> None:
    """Kill whatever is left of the process tree: no Envoy may be orphaned."""
    leftovers = _live_children()
    for process in leftovers:
        with contextlib.suppress(psutil.Error):
            log.warning("killing leftover process %d (%s)", process.pid, process.name())
            process.kill()
    psutil.wait_procs(leftovers, timeout=5)
