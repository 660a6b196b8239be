"""`xds-server certs --kube-namespace`: the stores as kubernetes.io/tls Secrets, through the
real `kubernetes` client and a FAKE API server, and delivered into a pod's secret volume the
way the kubelet does it (an atomic `..data` swap)."""

from __future__ import annotations

import asyncio
import base64
import subprocess
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from bench.lab.certs import assert_consistent, certs_cli, stored_serial
from tests.harness.fake_kube_api import FakeKubeApi
from xds_server.certs.directory import CertDirectory
from xds_server.certs.secret_api import SECRET_NAMES, secret_stores
from xds_server.certs.secret_volume import SecretVolume

pytestmark = pytest.mark.timeout(60)


def kubelet_projects(api: FakeKubeApi, namespace: str, root: Path) -> CertDirectory:
    """What the kubelet does for each mounted Secret: its data, swapped in atomically."""
    for store, name in SECRET_NAMES.items():
        secret = api.objects["Secret"][(namespace, name)]
        assert secret["type"] == "kubernetes.io/tls"
        files = {key: base64.b64decode(value) for key, value in secret["data"].items()}
        SecretVolume(root / store).write(files)
    return CertDirectory(root)


async def test_init_rotate_and_check_keep_the_stores_in_secrets(
    api: FakeKubeApi, tmp_path: Path
) -> None:
    kubeconfig = str(api.kubeconfig(tmp_path))
    where = ["--kube-namespace", "edge", "--kubeconfig", kubeconfig]
    init = await _cli("init", *where, "--san", "127.0.0.1")
    assert init.returncode == 0, init.stderr
    assert {name for (ns, name) in api.objects["Secret"] if ns == "edge"} == set(
        SECRET_NAMES.values()
    )
    for name in SECRET_NAMES.values():
        secret = api.objects["Secret"][("edge", name)]
        assert {"tls.crt", "tls.key", "ca.crt"} <= set(secret["data"])
    check = await _cli("check", *where)
    assert check.returncode == 0, check.stdout + check.stderr

    mounted = kubelet_projects(api, "edge", tmp_path / "pod")
    assert_consistent(mounted)
    before = stored_serial(mounted, "envoy")
    ca_before = api.objects["Secret"][("edge", "xds-server-ca")]["data"]["tls.crt"]

    rotate = await _cli("rotate", *where, "--force")
    assert rotate.returncode == 0, rotate.stderr
    again = await _cli("init", *where, "--san", "127.0.0.1")  # the CA is kept
    assert again.returncode == 0
    assert api.objects["Secret"][("edge", "xds-server-ca")]["data"]["tls.crt"] == ca_before
    mounted = kubelet_projects(api, "edge", tmp_path / "pod")
    assert_consistent(mounted)
    assert stored_serial(mounted, "envoy") != before


async def test_a_concurrent_writer_gets_a_conflict_and_changes_nothing(
    api: FakeKubeApi, tmp_path: Path
) -> None:
    kubeconfig = str(api.kubeconfig(tmp_path))
    init = await _cli("init", "--kube-namespace", "ns", "--kubeconfig", kubeconfig)
    assert init.returncode == 0, init.stderr
    await asyncio.to_thread(_race, kubeconfig)  # the client blocks; the fake runs here


def _race(kubeconfig: str) -> None:
    mine = secret_stores("ns", kubeconfig)["envoy"]
    version = mine.read()
    assert version is not None
    theirs = secret_stores("ns", kubeconfig)["envoy"]
    assert theirs.read() is not None
    theirs.write(version.files)  # someone else got there first
    with pytest.raises(ApiException) as conflict:
        mine.write({**version.files, "tls.crt": b"stale"})
    assert conflict.value.status == 409
    after = mine.read()
    assert after is not None
    assert after.files["tls.crt"] == version.files["tls.crt"]


async def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """In a thread: the fake API server answers from this test's event loop."""
    return await asyncio.to_thread(certs_cli, *args)
