"""One bad object never takes the fleet down. Hostile and careless input, written as an
attacker or a hurried user would, through the real `xds-server` process and a real Envoy:
each bad object is rejected in one line naming its file, everything else keeps being served,
and no proxy ever sees what it would refuse."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.lab.ads_client import SyntheticProxy
from bench.lab.backend import Backend
from bench.lab.wait import until
from bench.lab.xds import (
    XdsEnvoy,
    XdsServer,
    app,
    endpoint_slice,
    ingress,
    rule,
    service,
    tls_secret,
    who,
    write_manifests,
)
from tests.harness.cli import run_cli
from xds_server.certs import pki

pytestmark = pytest.mark.timeout(120)

GOOD_BACKENDS = "ab"
DAY = datetime.timedelta(days=1)


def good_app(backends: dict[str, Backend], tls: pki.Pair) -> list[dict[str, Any]]:
    good = ingress(
        "good",
        [rule("good.example", ("/", "Prefix", "a", 80))],
        tls=[{"hosts": ["good.example"], "secretName": "good-tls"}],
    )
    good["metadata"]["creationTimestamp"] = "2024-01-01T00:00:00Z"  # older than any copycat
    return [*app(backends, GOOD_BACKENDS), tls_secret("good-tls", tls.certificate, tls.key), good]


def yaml_text(body: dict[str, Any]) -> str:
    return yaml.safe_dump(body)


def ingress_with(name: str, **spec: Any) -> str:
    body = ingress(name, [rule(f"{name}.example", ("/", "Prefix", "a", 80))])
    body["metadata"]["creationTimestamp"] = "2026-12-01T00:00:00Z"
    body["spec"].update(spec)
    return yaml_text(body)


def hostile_files(other: pki.Pair) -> dict[str, tuple[str | bytes, str]]:
    """file name -> (content, what its one rejection line says)."""
    path = {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "a"}}}
    port80 = {**path, "backend": {"service": {"name": "a", "port": 80}}}
    huge_port = {**path, "backend": {"service": {"name": "a", "port": {"number": 99999999999}}}}
    slice_base = endpoint_slice("a", "http", 1, ["127.0.0.1"], suffix="x")
    garbage = tls_secret("garbage-tls", b"not a certificate", b"not a key")
    mismatched = tls_secret(
        "mismatch-tls", other.certificate, pki.key_pem(pki.new_key("ecdsa-p256"))
    )
    return {
        "kind-5.yaml": ("apiVersion: v1\nkind: 5\nmetadata: {name: x}\n", "needs apiVersion, kind"),
        "rules-list.yaml": (ingress_with("r1", rules=["x"]), "spec.rules[0]: expected a mapping"),
        "rules-str.yaml": (ingress_with("r2", rules="x"), "spec.rules: expected a list"),
        "http-5.yaml": (ingress_with("r3", rules=[{"http": 5}]), "spec.rules[0].http: expected"),
        "paths-5.yaml": (ingress_with("r4", rules=[{"http": {"paths": 5}}]), "paths: expected"),
        "port-80.yaml": (
            ingress_with("r5", rules=[{"http": {"paths": [port80]}}]),
            "backend.service.port: expected a mapping",
        ),
        "port-huge.yaml": (
            ingress_with("r6", rules=[{"http": {"paths": [huge_port]}}]),
            "port.number: expected a whole number 1-65535",
        ),
        "tls-hosts-5.yaml": (ingress_with("r7", tls=[{"hosts": 5}]), "spec.tls[0].hosts"),
        "labels-list.yaml": (
            yaml_text(
                {**service("s1", [("http", 80)]), "metadata": {"name": "s1", "labels": ["a"]}}
            ),
            "metadata.labels: expected a mapping",
        ),
        "service-ports.yaml": (
            yaml_text({**service("s2", []), "spec": {"ports": [80]}}),
            "spec.ports[0]: expected a mapping",
        ),
        "slice-ports.yaml": (yaml_text({**slice_base, "ports": ["http"]}), "ports[0]: expected"),
        "slice-endpoints.yaml": (
            yaml_text({**slice_base, "endpoints": ["x"]}),
            "endpoints[0]: expected a mapping",
        ),
        "slice-conditions.yaml": (
            yaml_text(
                {**slice_base, "endpoints": [{"addresses": ["1.2.3.4"], "conditions": "yes"}]}
            ),
            "conditions: expected a mapping",
        ),
        "slice-address-string.yaml": (
            yaml_text({**slice_base, "endpoints": [{"addresses": "1.2.3.4"}]}),
            "addresses: expected a list",
        ),
        "slice-not-ipv4.yaml": (
            yaml_text({**slice_base, "endpoints": [{"addresses": ["not-an-ip"]}]}),
            "expected an IPv4 address",
        ),
        "deep.json": ("[" * 100_000 + "]" * 100_000, "(--max-depth)"),
        "list-items-5.yaml": ("apiVersion: v1\nkind: List\nitems: 5\n", "items must be a list"),
        "garbage.yaml": (bytes(range(256)) * 4, "garbage.yaml: not UTF-8 text"),
        "prefix-query.yaml": (
            yaml_text(ingress("q", [rule("q.example", ("/a?b=1", "Prefix", "a", 80))])),
            "a prefix with ? or # matches no request path",
        ),
        "host-newline.yaml": (
            yaml_text(ingress("nl", [rule("evil\n.example", ("/", "Prefix", "a", 80))])),
            "host: expected a DNS name",
        ),
        "host-nul.yaml": (
            yaml_text(ingress("nul", [rule("evil\x00.example", ("/", "Prefix", "a", 80))])),
            "host: expected a DNS name",
        ),
        "tls-same-host.yaml": (
            ingress_with("copycat", tls=[{"hosts": ["GOOD.example"], "secretName": "good-tls"}]),
            "TLS host good.example is already served by",
        ),
        "tls-no-hosts.yaml": (
            ingress_with("nohosts", tls=[{"secretName": "good-tls"}, {"secretName": "good-tls"}]),
            "the default TLS certificate (no hosts) is already served by",
        ),
        "secret-garbage.yaml": (
            yaml_text(garbage)
            + "---\n"
            + ingress_with("g", tls=[{"hosts": ["g.example"], "secretName": "garbage-tls"}]),
            "Secret default/garbage-tls: unreadable certificate or key",
        ),
        "secret-mismatch.yaml": (
            yaml_text(mismatched)
            + "---\n"
            + ingress_with("m", tls=[{"hosts": ["m.example"], "secretName": "mismatch-tls"}]),
            "Secret default/mismatch-tls: the key does not match",
        ),
        "alias-bomb.yaml": (alias_bomb(), "--max-values"),
    }


def alias_bomb() -> str:
    """12 KB that a naive reader expands into 2,000 x 2,000 paths."""
    paths = "[" + ", ".join(["*p"] * 2000) + "]"
    rules = "[" + ", ".join(["*r"] * 2000) + "]"
    return (
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: bomb}\n"
        "x: &p {path: /, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}\n"
        f"y: &r {{host: bomb.example, http: {{paths: {paths}}}}}\n"
        f"spec: {{rules: {rules}}}\n"
    )


def write_raw(directory: Path, name: str, content: str | bytes) -> None:
    data = content.encode() if isinstance(content, str) else content
    (directory / f".{name}.tmp").write_bytes(data)
    (directory / f".{name}.tmp").rename(directory / name)


def write_app(
    manifests: Path, backends: dict[str, Backend], target: str, name: str = "app"
) -> None:
    """Services a and b, and every request routed to `target`."""
    route = ingress("i", [rule(None, ("/", "Prefix", target, 80))])
    write_manifests(manifests, name, [*app(backends, "ab"), route])


async def start(
    processes: list[Any], workdir: Path, manifests: Path, *flags: str, sotw: bool = False
) -> tuple[XdsServer, XdsEnvoy]:
    server = await XdsServer(workdir, manifests, *flags).start()
    processes.append(server)
    envoy = XdsEnvoy(workdir, server, "n1", sotw=sotw)
    processes.append(envoy)
    return server, await envoy.start()


async def metric(server: XdsServer, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", await server.metrics(), re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("sotw", [False, True], ids=["delta", "sotw"])
async def test_every_bad_object_is_rejected_alone_and_a_fresh_envoy_gets_every_good_route(
    sotw: bool, workdir: Path, manifests: Path, backends: dict[str, Backend], processes: list[Any]
) -> None:
    ca = pki.issue_ca("test-ca", DAY, "ecdsa-p256")
    good_tls = pki.issue_leaf(ca, "good", ["good.example"], "server", DAY, "ecdsa-p256")
    write_manifests(manifests, "app", good_app(backends, good_tls))
    bad = hostile_files(good_tls)
    for name, (content, _) in bad.items():
        write_raw(manifests, name, content)
    server, envoy = await start(processes, workdir, manifests, sotw=sotw)

    await until(lambda: _routes(envoy, "good.example", "a"))
    status = await server.status()
    for name, (_, says) in bad.items():
        lines = [line for line in status["rejected"] if line.startswith(f"{name}:")]
        assert any(says in line for line in lines), f"{name}: {lines or status['rejected']}"
        assert all("\n" not in line for line in lines)
    for host in ("copycat.example", "nohosts.example", "g.example", "m.example"):
        assert await who(envoy, host, "/") == "a", f"{host}: its HTTP routes still serve"
    assert await metric(server, 'xds_nacks_total{type="Listener"}') == 0
    assert "NACK" not in server.log(), "nothing Envoy refuses was ever sent"
    ready = (await server.get("/readyz")).json()
    assert ready["ready"] is True
    assert "objects rejected" in " ".join(ready["degraded"])

    counted = await metric(server, "xds_rejected_objects_total")
    assert counted == len(status["rejected"]), "each rejection counted once"
    write_manifests(
        manifests, "later", [ingress("later", [rule("later.example", ("/", "Prefix", "b", 80))])]
    )
    await until(lambda: _routes(envoy, "later.example", "b"))
    assert await metric(server, "xds_rejected_objects_total") == counted, "not again per reload"
    for name in bad:
        (manifests / name).unlink()
    await until(lambda: _status_clean(server))
    assert await metric(server, "xds_rejected_objects_current") == 0


async def _routes(envoy: XdsEnvoy, host: str, backend: str, path: str = "/") -> bool:
    return await who(envoy, host, path) == backend


async def _status_clean(server: XdsServer) -> bool:
    rejected: list[str] = (await server.status())["rejected"]
    return rejected == []


async def test_a_missing_directory_keeps_the_last_good_config_and_says_so(
    workdir: Path, manifests: Path, backends: dict[str, Backend], processes: list[Any]
) -> None:
    write_app(manifests, backends, "a")
    server, envoy = await start(processes, workdir, manifests)
    gone = manifests.with_name("manifests.gone")
    os.rename(manifests, gone)
    await until(lambda: _degraded(server, "the directory is missing"))
    assert await metric(server, "xds_source_problem") == 1
    assert await who(envoy, "any.example", "/") == "a", "routes stay"
    assert "the directory is missing" in server.log()
    os.rename(gone, manifests)
    write_app(manifests, backends, "b")
    await until(lambda: _routes(envoy, "any.example", "b"))
    assert "degraded" not in (await server.get("/readyz")).json()


async def _degraded(server: XdsServer, says: str) -> bool:
    degraded: list[str] = (await server.get("/readyz")).json().get("degraded", [])
    return says in " ".join(degraded)


async def test_symlink_loops_are_walked_once_and_nothing_is_read_twice(
    workdir: Path, manifests: Path, backends: dict[str, Backend], processes: list[Any]
) -> None:
    write_app(manifests, backends, "a")
    (manifests / "sub").mkdir()
    write_manifests(
        manifests / "sub", "more", [ingress("j", [rule("j.example", ("/", "Prefix", "b", 80))])]
    )
    for name in ("a", "b", "loop"):
        os.symlink(".", manifests / name)
    os.symlink("..", manifests / "sub" / "up")
    os.symlink("app.yaml", manifests / "alias.yaml")  # the same file under another name
    server, envoy = await start(processes, workdir, manifests)
    await until(lambda: _routes(envoy, "j.example", "b"))
    assert (await server.status())["rejected"] == [], "every object read exactly once"
    assert (await server.get("/healthz")).status_code == 200


async def test_the_same_object_in_two_files_is_served_once_and_named_twice(
    workdir: Path, manifests: Path, backends: dict[str, Backend], processes: list[Any]
) -> None:
    write_app(manifests, backends, "a", name="a-first")
    write_manifests(manifests, "b-second", [ingress("i", [rule(None, ("/", "Prefix", "b", 80))])])
    server, envoy = await start(processes, workdir, manifests)
    assert await who(envoy, "x.example", "/") == "a"
    (line,) = (await server.status())["rejected"]
    assert line.startswith("b-second.yaml: Ingress default/i: already defined in a-first.yaml")


async def test_big_input_is_read_off_the_event_loop_and_limits_reject_what_is_too_much(
    workdir: Path, manifests: Path, backends: dict[str, Backend], processes: list[Any]
) -> None:
    write_app(manifests, backends, "a")
    server, envoy = await start(processes, workdir, manifests, "--max-file-size", "2MiB")
    serial = (await server.status())["serial"]
    paths = [(f"/p{n}", "Prefix", "b", 80) for n in range(10_000)]
    write_manifests(manifests, "big", [ingress("big", [rule("big.example", *paths)])])
    answered = 0
    while (await server.status())["serial"] == serial:  # the 10,000 paths are being built
        assert (await server.get("/healthz")).status_code == 200
        answered += 1
    assert answered >= 1, "the event loop answered while the Ingress was read and built"
    await until(lambda: _routes(envoy, "big.example", "b", "/p1"), timeout=30)
    write_raw(manifests, "huge.json", json.dumps({"pad": "x" * (3 * 2**20)}))
    await until(lambda: _rejected(server, "huge.json", "more than 2097152 (--max-file-size)"))
    assert await who(envoy, "big.example", "/p9999") == "b"


async def _rejected(server: XdsServer, name: str, says: str) -> bool:
    return any(
        line.startswith(f"{name}:") and says in line for line in (await server.status())["rejected"]
    )


async def test_a_listener_envoy_cannot_bind_is_nacked_parked_and_logged_with_its_reason(
    workdir: Path, manifests: Path, backends: dict[str, Backend], processes: list[Any]
) -> None:
    """A NACK only Envoy can know about (its port is taken on its host): the full reason is
    logged, the metric has no per-node label, the version is never re-sent, and everything
    else keeps flowing."""
    ca = pki.issue_ca("test-ca", DAY, "ecdsa-p256")
    tls = pki.issue_leaf(ca, "good", ["good.example"], "server", DAY, "ecdsa-p256")
    write_manifests(manifests, "app", good_app(backends, tls))
    server = await XdsServer(workdir, manifests).start()
    processes.append(server)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", server.envoy_https_port))
        taken.listen()
        envoy = XdsEnvoy(workdir, server, "n1")
        processes.append(envoy)
        await envoy.start()
        await until(lambda: _nack_logged(server))
        pushes = await metric(server, 'xds_pushes_total{type="Listener"}')
        await asyncio.sleep(1.0)
        assert await metric(server, 'xds_pushes_total{type="Listener"}') == pushes, "not resent"
        assert await metric(server, 'xds_nacks_total{type="Listener"}') >= 1
        assert 'node="' not in await server.metrics(), "no label per client-chosen node id"
        assert await who(envoy, "good.example", "/") == "a"
        write_manifests(
            manifests,
            "later",
            [ingress("later", [rule("later.example", ("/", "Prefix", "b", 80))])],
        )
        await until(lambda: _routes(envoy, "later.example", "b"))


async def _nack_logged(server: XdsServer) -> bool:
    for line in server.log().splitlines():
        if "NACK from n1 for Listener" in line:
            message = json.loads(line)["msg"]
            return "ingress_https" in message and ("bind" in message or "in use" in message)
    return False


def test_a_busy_http_port_is_one_line_and_no_traceback(workdir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "xds_server", "serve", "--manifests", str(workdir), "--insecure",
            "--listen", "127.0.0.1:0", "--http-listen", f"127.0.0.1:{port}",
        )  # fmt: skip
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    assert f"127.0.0.1:{port}" in errors[0]


async def test_streams_that_end_leave_no_task_behind(
    workdir: Path, manifests: Path, backends: dict[str, Backend], processes: list[Any]
) -> None:
    write_app(manifests, backends, "a")
    server = await XdsServer(workdir, manifests).start()
    processes.append(server)
    proxies = []
    for node in range(6):
        proxy = await SyntheticProxy(f"127.0.0.1:{server.grpc_port}", f"p{node}").start()
        await until(lambda p=proxy: _has_routes(p))
        proxies.append(proxy)
    for proxy in proxies[:3]:  # gone while the server runs
        await proxy.stop()
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)  # the others still connected
    await asyncio.sleep(0.5)
    for proxy in proxies[3:]:
        await proxy.stop()
    await asyncio.to_thread(server.proc.wait, 20)
    assert server.proc.returncode == 0
    assert "Task was destroyed" not in server.log()
    assert "Traceback" not in server.log(), server.log()


async def _has_routes(proxy: SyntheticProxy) -> bool:
    return bool(proxy.vhosts)
