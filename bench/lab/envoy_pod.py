"""The Envoy pod our manifests declare, as processes for the pod runner.

Containers: Envoy (`--drain-strategy immediate`, admin on a unix socket in a directory the
two containers share) with a preStop httpGet on the sidecar's `/shutdown`; the sidecar
(`shutdown-manager serve`) with `shutdown-manager drain` as its preStop exec hook. Envoy's
config comes from an xDS server when one is given (as deployed), else a static bootstrap.

Two wirings, as deploy/ has them: `classic` (the sidecar a regular container) and `native`
(an init container with restartPolicy Always and a startupProbe on /healthz: it starts before
Envoy and stops after it). Given an API server (`kube`), the pod exists there and the native
sidecar runs with --confirm-deletion; deleting the pod stamps its deletionTimestamp first, as
the API server does before the kubelet acts.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from bench.lab.envoy import Envoy, free_port, tcp_listener
from bench.lab.pod import (
    Container,
    ExecHook,
    HttpGetHook,
    HttpProbe,
    Pod,
    SidecarHooks,
    TerminationReport,
)
from bench.lab.sidecar import COMMAND
from bench.lab.xds import XDS, XdsServer

MIN_DRAIN = 2.0
DRAIN_TIMEOUT = 8.0
GRACE_PERIOD = 10.0
NAMESPACE = "envoy-lifecycle"

Wiring = Literal["classic", "native"]
WIRINGS: tuple[Wiring, ...] = ("classic", "native")


class ApiServer(Protocol):
    """What the pod needs of a Kubernetes API server (tests/harness/fake_kube_api.py)."""

    def add_pod(self, name: str, namespace: str, uid: str) -> None: ...

    def start_deleting(self, name: str, namespace: str, grace_period: float) -> None: ...

    def kubeconfig(self, directory: Path) -> Path: ...


@dataclass
class EnvoyPod:
    pod: Pod
    envoy: Envoy
    sidecar_port: int
    shared: Path
    kube: ApiServer | None = None

    @property
    def sidecar_url(self) -> str:
        return f"http://127.0.0.1:{self.sidecar_port}"

    async def start(self) -> EnvoyPod:
        await self.pod.start()
        await self.envoy.wait_live()
        return self

    # The `Target` of tests/e2e/scenarios.py:

    def url(self, path: str = "/") -> str:
        return self.envoy.url(path)

    @property
    def tcp_port(self) -> int:
        return self.envoy.ports["tcp_passthrough"]

    async def delete(self) -> TerminationReport:
        if self.kube is not None:
            self.kube.start_deleting(self.pod.name, NAMESPACE, self.pod.grace_period)
        return await self.pod.delete()

    def drain_outcome(self) -> dict[str, Any]:
        """The drain's final event as the sidecar logged it (the hook's output is invisible)."""
        lines = (self.shared / "shutdown-manager.log").read_text().splitlines()
        finished = [json.loads(x) for x in lines if '"event": "finished"' in x]
        assert len(finished) == 1, lines
        outcome: dict[str, Any] = finished[0]
        return outcome


def policy_flags(min_drain: float, drain_timeout: float) -> list[str]:
    return [
        "--min-drain-duration", f"{min_drain}s",
        "--drain-timeout", f"{drain_timeout}s",
        "--ignore-listener", "probe",
    ]  # fmt: skip


def envoy_pod(
    workdir: Path,
    backend_port: int,
    address: str = "127.0.0.1",
    min_drain: float = MIN_DRAIN,
    drain_timeout: float = DRAIN_TIMEOUT,
    grace_period: float = GRACE_PERIOD,
    name: str = "envoy",
    ports: dict[str, int] | None = None,
    xds: XdsServer | None = None,
    policy: tuple[str, ...] = (),
    wiring: Wiring = "classic",
    kube: ApiServer | None = None,
    sidecar_hooks: SidecarHooks = "at-deletion",
) -> EnvoyPod:
    """`ports` pins Envoy's listener ports (a load balancer's config names them); with `xds`,
    Envoy's config comes from that xDS server instead of a static bootstrap; `policy` adds
    drain flags (to serve and to the hook alike); `wiring` places the sidecar; `kube` is the
    API server a native sidecar confirms the deletion with; `sidecar_hooks` is the runner's
    model of when a native sidecar's preStop runs (bench/lab/pod.py)."""
    shared = workdir / name  # the pod's shared emptyDir (admin socket, control socket)
    shared.mkdir(parents=True, exist_ok=True)
    envoy = Envoy(
        workdir=shared,
        backend_port=backend_port,
        drain_time_s=int(drain_timeout),
        address=address,
        pin_ports=address != "127.0.0.1",
        ports=dict(ports or {}),
    )
    if xds is not None:
        envoy.config, envoy.ports = xds_bootstrap(xds, envoy, name)
        envoy.http_listener = xds.serving_listener
    sidecar_port = free_port()
    control = str(shared / "shutdown-manager.sock")
    flags = [*policy_flags(min_drain, drain_timeout), *policy]
    ready = ["--ready-file", str(shared / "drained")]
    env: dict[str, str] = {}
    confirm: list[str] = []
    if kube is not None:
        uid = str(uuid.uuid4())
        kube.add_pod(name, NAMESPACE, uid)
        env = {"POD_NAME": name, "POD_NAMESPACE": NAMESPACE, "POD_UID": uid,
               "KUBECONFIG": str(kube.kubeconfig(shared))}  # fmt: skip
        confirm = ["--confirm-deletion"] if wiring == "native" else []
    sidecar = Container(
        name="shutdown-manager",
        argv=[
            *COMMAND,
            "serve",
            "--listen",
            f"127.0.0.1:{sidecar_port}",
            "--admin-address",
            envoy.admin_address,
            "--control-socket",
            control,
            "--log-format",
            "json",
            *confirm,
            *flags,
            *ready,
        ],
        pre_stop=ExecHook(
            [
                *COMMAND,
                "drain",
                "--control-socket",
                control,
                "--admin-address",
                envoy.admin_address,
                *flags,
                *ready,
            ]
        ),
        log_path=shared / "shutdown-manager.log",
        env=env,
    )
    proxy = Container(
        name="envoy",
        argv=envoy.argv(),
        pre_stop=HttpGetHook(port=sidecar_port, path="/shutdown"),
    )
    if wiring == "classic":
        pod = Pod(name, [proxy, sidecar], grace_period=grace_period)
    else:
        sidecar.restart_policy = "Always"
        sidecar.startup_probe = HttpProbe(port=sidecar_port, path="/healthz", period=0.05)
        pod = Pod(name, [proxy], grace_period, [sidecar], sidecar_hooks=sidecar_hooks)
    return EnvoyPod(pod=pod, envoy=envoy, sidecar_port=sidecar_port, shared=shared, kube=kube)


def xds_bootstrap(xds: XdsServer, envoy: Envoy, name: str) -> tuple[dict[str, Any], dict[str, int]]:
    """`xds-server bootstrap`'s output, plus a static TCP-proxy listener (Ingress has none)."""
    path = envoy.workdir / "xds-bootstrap.json"
    probe = envoy.ports.get("probe") or free_port()  # pinned ports are kept
    tcp = envoy.ports.get("tcp_passthrough") or free_port(envoy.address)
    security = ["--certs-dir", str(xds.certs_dir)] if xds.certs_dir else ["--insecure"]
    subprocess.run(
        [*XDS, "bootstrap", str(path), "--xds-address", f"127.0.0.1:{xds.grpc_port}",
         "--admin-socket", str(envoy.admin_socket), "--node-id", name, *security,
         "--probe-port", str(probe)],
        check=True, capture_output=True,
    )  # fmt: skip
    document: dict[str, Any] = json.loads(path.read_text())
    listener, cluster = tcp_listener(envoy.address, tcp, envoy.backend_port)
    document["static_resources"]["listeners"].append(listener)
    document["static_resources"]["clusters"].append(cluster)
    ports = {xds.serving_listener: xds.serving_port, "tcp_passthrough": tcp, "probe": probe}
    return document, ports
