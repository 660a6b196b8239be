"""`xds-server` command line: one-line errors, and the bootstrap it writes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.harness.cli import run_cli

pytestmark = pytest.mark.timeout(60)


BOOTSTRAP = ["bootstrap", "out.json", "--xds-address", "127.0.0.1:8001", "--admin-socket", "/a",
             "--node-id", "n"]  # fmt: skip


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("xds_server", *args)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["serve", "--manifests", "/nonexistent", "--insecure", "--listen", "x"], "HOST:PORT"),
        (
            ["serve", "--manifests", "/tmp"],
            "one of the arguments --certs-dir --insecure is required",
        ),
        (["serve", "--manifests", "/tmp", "--insecure", "--envoy-http-port", "0"], "port 1-65535"),
        (
            ["serve", "--manifests", "/tmp", "--insecure", "--stuck-stream-timeout", "0s"],
            "--stuck-stream-timeout must be more than 0",
        ),
        (
            [*BOOTSTRAP, "--certs-dir", "/nonexistent"],
            "no such directory",
        ),
        (
            [*BOOTSTRAP, "--insecure", "--certs-dir", "/tmp"],
            "not allowed with argument",
        ),
    ],
)
def test_bad_flags_give_one_line_and_exit_2(args: list[str], says: str) -> None:
    result = run(*args)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert says in line
    assert "Traceback" not in result.stderr


def test_missing_manifests_directory_is_one_line_and_exit_1(workdir: Path) -> None:
    result = run(
        "serve",
        "--manifests",
        str(workdir / "nope"),
        "--insecure",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].endswith("does not exist")


def test_bootstrap_is_written_atomically_with_delta_ads_and_the_probe_listener(
    workdir: Path,
) -> None:
    out = workdir / "bootstrap.json"
    result = run(
        "bootstrap",
        str(out),
        "--xds-address",
        "xds.example:8001",
        "--admin-socket",
        "/admin/admin.sock",
        "--node-id",
        "envoy-0",
        "--insecure",
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(out.read_text())
    assert document["node"] == {"id": "envoy-0", "cluster": "envoy"}
    assert document["admin"]["address"]["pipe"]["path"] == "/admin/admin.sock"
    assert document["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"
    (probe,) = document["static_resources"]["listeners"]
    assert probe["address"]["socket_address"]["port_value"] == 8002
    assert not list(workdir.glob(".*.tmp")), "no temporary file left behind"


def test_bootstrap_with_certs_uses_watched_sds_files(workdir: Path) -> None:
    certs = workdir / "certs"
    certs.mkdir()
    out = workdir / "bootstrap.json"
    result = run(
        "bootstrap",
        str(out),
        "--xds-address",
        "xds:8001",
        "--admin-socket",
        "/a.sock",
        "--node-id",
        "n",
        "--certs-dir",
        str(certs),
        "--sotw",
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(out.read_text())
    assert document["dynamic_resources"]["ads_config"]["api_type"] == "GRPC"
    (xds,) = [c for c in document["static_resources"]["clusters"] if c["name"] == "xds_cluster"]
    context = xds["transport_socket"]["typed_config"]["common_tls_context"]
    sds = context["tls_certificate_sds_secret_configs"][0]["sds_config"]["path_config_source"]
    assert sds["watched_directory"]["path"] == str(certs / "envoy")
    secret = json.loads(Path(sds["path"]).read_text())["resources"][0]
    chain = secret["tls_certificate"]["certificate_chain"]["filename"]
    assert chain == str(certs / "envoy" / "tls.crt")
    validation = context["combined_validation_context"]["default_validation_context"]
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "xds-server"}}
    ]
