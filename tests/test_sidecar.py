"""`serve` and the `drain` hook as real processes against a real Envoy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.lab.clients import http_client
from bench.lab.envoy import Envoy
from bench.lab.sidecar import SidecarProcess, run_hook
from bench.lab.wait import until
from envoy_lifecycle.http import IDLE_TIMEOUT
from shutdown_manager.listeners_mark import mark_path

pytestmark = pytest.mark.timeout(90)

FAST = ("--min-drain-duration", "0.5s", "--drain-timeout", "10s", "--ignore-listener", "probe")


async def start_sidecar(
    sidecars: list[SidecarProcess], workdir: Path, envoy: Envoy, *flags: str
) -> SidecarProcess:
    sidecar = SidecarProcess(workdir, envoy.admin_address, *FAST, *flags)
    sidecars.append(sidecar)
    return await sidecar.start()


def log_lines(sidecar: SidecarProcess) -> list[dict[str, object]]:
    return [json.loads(line) for line in sidecar.log().splitlines() if line.startswith("{")]


async def get(url: str, timeout: float = 30.0) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=timeout) as client:
        return await client.get(url)


async def test_hook_drains_through_the_sidecar_and_both_report_it(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess]
) -> None:
    sidecar = await start_sidecar(sidecars, workdir, envoy)
    status, output = await run_hook("--control-socket", str(sidecar.control_socket))
    assert status == 0, output
    assert "drain drained" in output
    assert await envoy.state() == "DRAINING"
    messages = [str(line["msg"]) for line in log_lines(sidecar)]
    assert any(m.startswith("drain started") for m in messages)
    assert any(m.startswith("drain drained") for m in messages), "progress is in serve's log"


async def test_control_socket_is_private(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess]
) -> None:
    sidecar = await start_sidecar(sidecars, workdir, envoy)
    assert stat.S_IMODE(sidecar.control_socket.stat().st_mode) == 0o600


async def test_two_hooks_at_once_join_one_drain(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess]
) -> None:
    sidecar = await start_sidecar(sidecars, workdir, envoy)
    flags = ("--control-socket", str(sidecar.control_socket))
    (first, out1), (second, out2) = await asyncio.gather(run_hook(*flags), run_hook(*flags))
    assert (first, second) == (0, 0), (out1, out2)
    metrics = (await get(f"{sidecar.url}/metrics")).text
    assert 'shutdown_manager_drains_total{outcome="drained"} 1.0' in metrics
    started = [line for line in log_lines(sidecar) if str(line["msg"]).startswith("drain started")]
    assert len(started) == 1


async def test_many_shutdown_waiters_are_released_when_the_drain_ends(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess]
) -> None:
    sidecar = await start_sidecar(sidecars, workdir, envoy)
    waiters = [asyncio.create_task(get(f"{sidecar.url}/shutdown")) for _ in range(50)]
    await asyncio.sleep(0.5)
    assert not any(w.done() for w in waiters), "/shutdown must wait for a drain"
    assert await envoy.state() == "LIVE", "/shutdown must never start a drain"
    status, _ = await run_hook("--control-socket", str(sidecar.control_socket))
    responses = await asyncio.gather(*waiters)
    assert status == 0
    assert all(r.status_code == 200 for r in responses)
    assert all(r.json()["outcome"] == "drained" for r in responses)


async def test_sigterm_mid_drain_waits_for_the_drain_then_exits_zero(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess]
) -> None:
    sidecar = await start_sidecar(sidecars, workdir, envoy, "--quiet-period", "0")
    async with http_client() as client:
        assert (await client.get(envoy.url())).status_code == 200  # an idle pooled connection
        hook = asyncio.create_task(run_hook("--control-socket", str(sidecar.control_socket)))
        waiter = asyncio.create_task(get(f"{sidecar.url}/shutdown"))
        await until(lambda: _draining(sidecar), what="the hook's drain")
        sidecar.signal()
        await asyncio.sleep(0.5)
        assert sidecar.proc is not None
        assert sidecar.proc.poll() is None, "serve must keep running until the drain ends"
    # the client closed its pool: the drain ends, the waiter gets its answer, serve exits 0
    status, output = await hook
    assert status == 0, output
    assert (await waiter).status_code == 200
    assert await sidecar.wait_exit(10) == 0


async def test_a_second_signal_exits_at_once_with_a_hook_and_a_waiter_attached(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess]
) -> None:
    """The drain is held for a minute (an idle client, no quiet release): the second SIGTERM
    ends serve at once, though a hook and a /shutdown wait on it; the hook, cut off, does not
    claim the drain ended: it drains on by itself."""
    policy = ("--quiet-period", "0", "--min-drain-duration", "60s", "--drain-timeout", "90s")
    sidecar = await start_sidecar(sidecars, workdir, envoy, *policy)
    async with http_client() as client:
        assert (await client.get(envoy.url())).status_code == 200  # an idle pooled connection
        hook = asyncio.create_task(
            run_hook("--control-socket", str(sidecar.control_socket), *policy)
        )
        waiter = asyncio.create_task(get(f"{sidecar.url}/shutdown"))
        await until(lambda: _draining(sidecar), what="the hook's drain")
        sidecar.signal()
        await until(lambda: _logged(sidecar, "SIGTERM during the drain"), what="the first")
        sidecar.signal()
        await sidecar.wait_exit(10)  # the drain's minimum is 60 s
        assert not hook.done(), "the hook does not say drained: it drains on alone"
        hook.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hook  # and its process killed
        with contextlib.suppress(httpx.HTTPError):
            await waiter
    assert _logged(sidecar, "exiting without waiting for the drain")


async def test_a_sidecar_starting_while_the_hook_drains_alone_joins_the_drain(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess]
) -> None:
    """The hook found no sidecar and drains by itself; a sidecar that comes up meanwhile must
    not restore Envoy to LIVE (the kubelet stops Envoy once the hook says drained)."""
    control = workdir / "sm.sock"  # where the sidecar will listen, once it has started
    async with http_client() as client:
        assert (await client.get(envoy.url())).status_code == 200  # holds the drain
        flags = ("--control-socket", str(control), "--admin-address", envoy.admin_address)
        policy = ("--min-drain-duration", "3s", "--drain-timeout", "20s", "--quiet-period", "0")
        hook = asyncio.create_task(run_hook(*flags, *policy))
        await until(lambda: _state_is(envoy, "DRAINING"), what="the hook's drain alone")
        sidecar = await start_sidecar(sidecars, workdir, envoy)
        await until(lambda: _draining(sidecar), what="the sidecar joining the drain")
        assert await envoy.state() == "DRAINING"
        assert _logged(sidecar, "joining the drain, not restoring Envoy")
    status, output = await hook  # the client left: drained
    assert status == 0, output
    assert "draining from the hook" in output
    assert await envoy.state() == "DRAINING", "never restored under the hook"
    assert not _logged(sidecar, "restored")


async def _state_is(envoy: Envoy, state: str) -> bool:
    return await envoy.state() == state


async def test_sigterm_without_a_hook_still_drains(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess]
) -> None:
    sidecar = await start_sidecar(sidecars, workdir, envoy)
    sidecar.signal()
    assert await sidecar.wait_exit(10) == 0
    assert await envoy.state() == "DRAINING"
    assert any(str(line["msg"]).startswith("drain drained") for line in log_lines(sidecar))


async def test_restarted_sidecar_restores_an_envoy_left_draining(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess]
) -> None:
    async with envoy.admin_http() as admin:
        await admin.post("/healthcheck/fail")  # what a drain of an earlier incarnation left
    assert await envoy.state() == "DRAINING"
    sidecar = await start_sidecar(sidecars, workdir, envoy)
    await until(lambda: _live(envoy), timeout=20, what="Envoy restored to LIVE")
    assert any("restored" in str(line["msg"]) for line in log_lines(sidecar))
    metrics = (await get(f"{sidecar.url}/metrics")).text
    assert "shutdown_manager_envoy_restored_total 1.0" in metrics


async def test_stale_ready_file_is_cleared_at_start(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess]
) -> None:
    ready = workdir / "ready"
    ready.write_text("{}")
    sidecar = await start_sidecar(sidecars, workdir, envoy, "--ready-file", str(ready))
    assert not ready.exists()
    with pytest.raises(httpx.ReadTimeout):
        await get(f"{sidecar.url}/shutdown", timeout=0.5)


async def test_hook_drains_alone_when_the_sidecar_is_unreachable_and_releases_waiters(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess]
) -> None:
    ready = workdir / "ready"
    sidecar = await start_sidecar(sidecars, workdir, envoy, "--ready-file", str(ready))
    waiter = asyncio.create_task(get(f"{sidecar.url}/shutdown"))
    status, output = await run_hook(
        "--control-socket", str(workdir / "nobody-here.sock"),
        "--admin-address", envoy.admin_address,
        "--ready-file", str(ready),
        *FAST,
    )  # fmt: skip
    assert status == 0, output
    assert "draining from the hook" in output
    assert json.loads(ready.read_text())["outcome"] == "drained"
    assert (await waiter).status_code == 200


async def test_sigterm_after_the_hook_drained_alone_exits_without_draining_again(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess]
) -> None:
    """The hook could not reach serve and drained by itself (its ready file says so): the
    SIGTERM that follows ends serve at once, no second drain of the minimum duration."""
    ready = workdir / "ready"
    sidecar = await start_sidecar(sidecars, workdir, envoy, "--ready-file", str(ready),
                                  "--min-drain-duration", "5s")  # fmt: skip
    status, output = await run_hook(
        "--control-socket", str(workdir / "nobody-here.sock"),
        "--admin-address", envoy.admin_address, "--ready-file", str(ready), *FAST,
    )  # fmt: skip
    assert status == 0, output
    sidecar.signal()
    assert await sidecar.wait_exit(10) == 0
    messages = [str(line["msg"]) for line in log_lines(sidecar)]
    assert not any(m.startswith("drain started") for m in messages)
    assert any("not draining again" in m for m in messages)


async def test_hook_exit_3_names_the_connections_left_at_the_deadline(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess]
) -> None:
    sidecar = await start_sidecar(
        sidecars, workdir, envoy, "--quiet-period", "0", "--drain-timeout", "1.5s"
    )
    waiter = asyncio.create_task(get(f"{sidecar.url}/shutdown"))
    async with http_client() as client:
        assert (await client.get(envoy.url())).status_code == 200
        status, output = await run_hook("--control-socket", str(sidecar.control_socket))
    assert status == 3, output
    assert "1 connections left" in output
    released = await waiter
    assert released.status_code == 200, "/shutdown releases the kubelet whatever the outcome"
    assert released.json()["outcome"] == "timed_out"


async def test_hook_exit_4_when_envoy_is_gone(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess]
) -> None:
    sidecar = await start_sidecar(sidecars, workdir, envoy)
    envoy.kill()
    status, output = await run_hook("--control-socket", str(sidecar.control_socket))
    assert status == 4, output


async def test_status_and_metrics_describe_the_drain(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess]
) -> None:
    sidecar = await start_sidecar(sidecars, workdir, envoy)
    assert (await get(f"{sidecar.url}/status")).json()["phase"] == "idle"
    await run_hook("--control-socket", str(sidecar.control_socket))
    status = (await get(f"{sidecar.url}/status")).json()
    assert status["phase"] == "done"
    assert status["outcome"] == "drained"
    metrics = (await get(f"{sidecar.url}/metrics")).text
    for name in (
        'shutdown_manager_drain_phase{phase="done"} 1.0',
        "shutdown_manager_envoy_active_connections 0.0",
        "shutdown_manager_drain_duration_seconds_count 1.0",
    ):
        assert name in metrics


async def test_a_ready_file_whose_directory_vanished_never_hangs_the_hook(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess]
) -> None:
    shared = workdir / "shared"
    shared.mkdir()
    sidecar = await start_sidecar(sidecars, workdir, envoy, "--ready-file", str(shared / "ready"))
    shared.rmdir()  # the emptyDir went away under the running sidecar
    status, output = await run_hook("--control-socket", str(sidecar.control_socket), timeout=20)
    assert status == 0, output
    body = (await get(f"{sidecar.url}/status")).json()
    assert body["outcome"] == "drained", body
    assert any("a drain observer failed" in str(line["msg"]) for line in log_lines(sidecar))
    sidecar.signal()
    assert await sidecar.wait_exit(timeout=10) == 0


async def test_a_stopped_sidecar_does_not_hold_the_hook_it_drains_alone(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess]
) -> None:
    sidecar = await start_sidecar(sidecars, workdir, envoy)
    sidecar.signal(signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        status, output = await run_hook(
            "--control-socket", str(sidecar.control_socket),
            "--admin-address", envoy.admin_address,
            *FAST,
            timeout=30,
        )  # fmt: skip
    finally:
        sidecar.signal(signal.SIGCONT)
    assert status == 0, output
    assert "draining from the hook" in output
    assert await envoy.state() == "DRAINING"


async def test_sighup_leaves_serve_running_and_its_socket_in_place(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess]
) -> None:
    sidecar = await start_sidecar(sidecars, workdir, envoy)
    sidecar.signal(signal.SIGHUP)
    await until(lambda: _logged(sidecar, "SIGHUP ignored"), what="the SIGHUP logged")
    assert (await get(f"{sidecar.url}/healthz")).status_code == 200
    assert sidecar.control_socket.exists()


async def test_malformed_requests_are_one_line_and_dribbling_clients_are_cut(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess]
) -> None:
    sidecar = await start_sidecar(sidecars, workdir, envoy)
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.0 400")
    writer.close()
    await until(lambda: _logged(sidecar, "Invalid header token"), what="the bad request logged")
    assert "Traceback" not in sidecar.log()
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    assert await asyncio.wait_for(reader.read(), timeout=IDLE_TIMEOUT * 4) == b"", "closed"
    writer.close()


# -- the hook's policy: the flags it was given apply to the drain it starts --------------------


async def status_of(sidecar: SidecarProcess) -> dict[str, Any]:
    body: dict[str, Any] = (await get(f"{sidecar.url}/status")).json()
    return body


async def test_the_hooks_minimum_applies_to_the_drain_it_starts(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess]
) -> None:
    """serve keeps a 30 s minimum; the hook says 0: the drain it starts ends with the last
    connection, not 30 s later (as Envoy Gateway's hook carries its policy)."""
    sidecar = await start_sidecar(
        sidecars, workdir, envoy, "--min-drain-duration", "30s", "--drain-timeout", "60s"
    )
    status, output = await run_hook(
        "--control-socket", str(sidecar.control_socket), "--min-drain-duration", "0"
    )
    assert status == 0, output
    assert "--min-drain-duration 0s" in output, "the hook says the policy in effect"
    state = await status_of(sidecar)
    assert state["policy"]["min_drain_duration"] == 0
    assert state["policy"]["drain_timeout"] == 60, "a flag not given is serve's"
    assert state["duration"] < 30, state
    (requested,) = [line for line in log_lines(sidecar) if "drain requested" in str(line["msg"])]
    assert requested["policy"]["min_drain_duration"] == 0  # type: ignore[index]


async def test_the_hooks_deadline_bounds_the_drain_it_starts(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess]
) -> None:
    """A connection that never leaves, serve's deadline 60 s, the hook's 2 s: the hook's
    ends it (exit 3), and serve's 5 s minimum, beyond it, is cut to it and said so."""
    sidecar = await start_sidecar(
        sidecars, workdir, envoy, "--quiet-period", "0", "--drain-timeout", "60s",
        "--min-drain-duration", "5s",
    )  # fmt: skip
    async with http_client() as client:
        assert (await client.get(envoy.url())).status_code == 200
        status, output = await run_hook(
            "--control-socket", str(sidecar.control_socket), "--drain-timeout", "2s"
        )
    assert status == 3, output
    assert "--min-drain-duration 5s is cut to the hook's --drain-timeout 2s" in output
    state = await status_of(sidecar)
    assert state["outcome"] == "timed_out"
    assert state["duration"] < 30, state


async def test_a_hook_joining_a_drain_with_another_policy_says_so(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess]
) -> None:
    sidecar = await start_sidecar(sidecars, workdir, envoy)
    flags = ("--control-socket", str(sidecar.control_socket))
    first = asyncio.create_task(run_hook(*flags, "--min-drain-duration", "3s"))
    while (await status_of(sidecar))["phase"] == "idle":  # noqa: ASYNC110 (another process)
        await asyncio.sleep(0.05)
    second_status, second = await run_hook(*flags, "--min-drain-duration", "0")
    first_status, _ = await first
    assert (first_status, second_status) == (0, 0), second
    expected = "joined the drain already running, with its policy: --min-drain-duration 3s"
    assert expected in second
    assert any(expected in str(line["msg"]) for line in log_lines(sidecar)), "and in serve's log"
    again_status, again = await run_hook(*flags, "--min-drain-duration", "3s")
    assert again_status == 0
    assert "joined" not in again, "the same policy joins without a word"


async def test_a_policy_flag_out_of_range_is_a_one_line_error_and_no_drain(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess]
) -> None:
    sidecar = await start_sidecar(sidecars, workdir, envoy)
    status, output = await run_hook(
        "--control-socket", str(sidecar.control_socket), "--poll-interval", "0.01"
    )
    assert status == 2, output
    assert len(output.strip().splitlines()) == 1, output
    assert (await status_of(sidecar))["phase"] == "idle"


# -- drain before unready: --health-check-failure-delay -----------------------------------------


async def ready_status(envoy: Envoy) -> int:
    async with envoy.admin_http() as admin:
        return (await admin.get("/ready")).status_code


async def test_during_the_delay_envoy_stays_ready_and_tells_clients_to_go(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess]
) -> None:
    sidecar = await start_sidecar(sidecars, workdir, envoy, "--health-check-failure-delay", "2s")
    hook = asyncio.create_task(run_hook("--control-socket", str(sidecar.control_socket)))
    while (await status_of(sidecar))["phase"] == "idle":  # noqa: ASYNC110 (another process)
        await asyncio.sleep(0.05)
    async with http_client() as client:
        response = await client.get(envoy.url())
    assert response.headers.get("connection") == "close", "clients are told to go"
    assert await ready_status(envoy) == 200, "while the load balancer still sees it ready"
    assert await envoy.state() == "LIVE"
    status, output = await hook
    assert status == 0, output
    assert "health check OK for 2s" in output
    assert await ready_status(envoy) == 503, "then the health check fails"
    assert (await status_of(sidecar))["listeners_drained"] is True
    metrics = (await get(f"{sidecar.url}/metrics")).text
    assert "shutdown_manager_envoy_listeners_drained 1.0" in metrics


async def test_a_restarted_sidecar_says_the_listeners_cannot_be_restored(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess]
) -> None:
    """The health check comes back (reversible); the drained listeners do not: logged, in
    /status and in the metrics, until Envoy restarts."""
    first = await start_sidecar(sidecars, workdir, envoy, "--health-check-failure-delay", "0.2s")
    status, output = await run_hook("--control-socket", str(first.control_socket))
    assert status == 0, output
    first.kill()  # the liveness probe restarts it; the pod is not being deleted
    second = await start_sidecar(sidecars, workdir, envoy)
    await until(lambda: _live(envoy), timeout=20, what="the health check restored")
    state = await status_of(second)
    assert state["listeners_drained"] is True
    metrics = (await get(f"{second.url}/metrics")).text
    assert "shutdown_manager_envoy_listeners_drained 1.0" in metrics
    assert any("cannot be undone" in str(line["msg"]) for line in log_lines(second))


async def test_a_mark_older_than_envoy_is_forgotten(
    envoy: Envoy, workdir: Path, sidecars: list[SidecarProcess]
) -> None:
    """Envoy restarted since its listeners were drained: it serves normally, nothing said."""
    control = workdir / "sm.sock"
    mark_path(control).write_text(json.dumps({"drained_at": time.time() - 3600}))
    sidecar = await start_sidecar(sidecars, workdir, envoy)
    await until(lambda: not mark_path(control).exists(), timeout=20, what="the old mark removed")
    assert (await status_of(sidecar))["listeners_drained"] is False


def _logged(sidecar: SidecarProcess, text: str) -> bool:
    return any(text in str(line["msg"]) for line in log_lines(sidecar))


async def _draining(sidecar: SidecarProcess) -> bool:
    return bool((await status_of(sidecar))["phase"] != "idle")


async def _live(envoy: Envoy) -> bool:
    return await envoy.state() == "LIVE"
