"""The Envoy pod Envoy Gateway renders, with our image as its shutdown manager.

Written from Envoy Gateway's published wiring (DESIGN.md section 3, its proxy resource
renderer and bootstrap template, read, not copied): the `envoy` container (`--config-yaml`
bootstrap with the admin API on 127.0.0.1:19000, a stats listener on 19001 and a ready
listener on 19003; `--drain-strategy immediate --drain-time-s <drain timeout>`; preStop
httpGet :19002/shutdown/ready; startup, readiness and liveness probes on :19003/ready) and the
`shutdown-manager` container (`envoy-gateway envoy shutdown-manager --ready-timeout`, preStop
exec `envoy-gateway envoy shutdown --drain-timeout --min-drain-duration`, startup, readiness
and liveness probes on :19002/healthz); grace = drain timeout + 300 s. Their args keep their
`--flag value` in one word, as Envoy Gateway writes them (Envoy's parser splits at the space).

Two forms from the same facts: `template()`, a pod template for real containers (fixed ports:
each pod has its own network namespace), and `process_pod()` for the process runner, whose
ports are picked free and passed with our drop-in's own flags. What Envoy serves is one static
listener to a backend: Envoy Gateway's xDS (and its certificates) are not what is tested.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.lab.envoy import HCM_TYPE, ROUTER, _static_cluster, envoy_binary, free_port
from bench.lab.images import ENVOY_TAG, PROJECT_TAGS
from bench.lab.pod import Container, ExecHook, HttpGetHook, HttpProbe, Pod
from bench.lab.sidecar import COMMAND

GATEWAY = [*COMMAND[:-1], "shutdown_manager.envoy_gateway"]
"""`envoy-gateway` as a process of the venv's Python (the image has it on PATH)."""
NAMESPACE = "envoy-gateway-system"
HEALTH_CHECK_TYPE = "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck"
SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "privileged": False,
    "runAsGroup": 65532,
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}


@dataclass
class Ports:
    """Envoy Gateway's fixed ports (a process pod picks free ones instead)."""

    admin: int = 19000
    stats: int = 19001
    sidecar: int = 19002
    ready: int = 19003
    http: int = 10080

    @classmethod
    def free(cls) -> Ports:
        return cls(*(free_port() for _ in range(5)))


@dataclass
class GatewayPodShape:
    """The drain settings Envoy Gateway's EnvoyProxy `shutdown` field sets, and the backend."""

    backend: tuple[str, int]
    drain_timeout: int = 60
    min_drain: int = 10
    ports: Ports = field(default_factory=Ports)
    address: str = "0.0.0.0"

    @property
    def grace(self) -> int:
        return self.drain_timeout + 300

    def bootstrap(self) -> dict[str, Any]:
        p, a = self.ports, self.address
        ready = _hcm("eg-ready-http", {"name": "local_route"}, [_ready_filter(), ROUTER])
        stats_route = _route("prometheus_stats", {"path": "/stats/prometheus"})
        serving = _route("backend", {"prefix": "/"})
        return {
            "admin": {"address": _socket("127.0.0.1", p.admin)},
            "static_resources": {
                "listeners": [
                    _listener(f"envoy-gateway-proxy-ready-{a}-{p.ready}", a, p.ready, ready),
                    _listener(
                        f"envoy-gateway-proxy-stats-{a}-{p.stats}",
                        a,
                        p.stats,
                        _hcm("eg-stats-http", stats_route, [ROUTER]),
                    ),
                    _listener("default/eg/http", a, p.http, _hcm("http-10080", serving, [ROUTER])),
                ],
                "clusters": [
                    _static_cluster("prometheus_stats", _socket("127.0.0.1", p.admin)),
                    _static_cluster("backend", _socket(*self.backend)),
                ],
            },
        }

    def envoy_args(self) -> list[str]:
        return [
            "--service-cluster default",
            "--service-node $(ENVOY_POD_NAME)",
            f"--config-yaml {json.dumps(self.bootstrap())}",
            "--log-level warn",
            "--cpuset-threads",
            "--drain-strategy immediate",
            f"--drain-time-s {self.drain_timeout}",
        ]

    def serve_args(self) -> list[str]:
        return ["envoy", "shutdown-manager", f"--ready-timeout={self.drain_timeout + 10}s"]

    def hook_args(self) -> list[str]:
        return [
            "envoy",
            "shutdown",
            f"--drain-timeout={self.drain_timeout}s",
            f"--min-drain-duration={self.min_drain}s",
        ]

    # -- real containers ---------------------------------------------------------------

    def template(self) -> dict[str, Any]:
        """The pod template (what Envoy Gateway's Deployment holds), our image swapped in."""
        env = [
            {"name": "ENVOY_GATEWAY_NAMESPACE", "value": NAMESPACE},
            {
                "name": "ENVOY_SERVICE_ZONE",
                "valueFrom": {
                    "fieldRef": {"fieldPath": "metadata.annotations['topology.kubernetes.io/zone']"}
                },
            },
            {"name": "ENVOY_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ]
        envoy = {
            "name": "envoy",
            "image": ENVOY_TAG,
            "command": ["envoy"],
            "args": self.envoy_args(),
            "env": env,
            "lifecycle": {"preStop": {"httpGet": {"path": "/shutdown/ready", "port": 19002}}},
            "ports": [
                {"containerPort": 19001, "name": "metrics"},
                {"containerPort": 19003, "name": "readiness"},
            ],
            "startupProbe": _probe("/ready", 19003, period=10, failures=30),
            "readinessProbe": _probe("/ready", 19003, period=5, failures=1),
            "livenessProbe": _probe("/ready", 19003, period=10, failures=3),
            "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}},
            "securityContext": SECURITY,
        }
        sidecar = {
            "name": "shutdown-manager",
            "image": PROJECT_TAGS[0],
            "command": ["envoy-gateway"],
            "args": self.serve_args(),
            "env": env,
            "lifecycle": {"preStop": {"exec": {"command": ["envoy-gateway", *self.hook_args()]}}},
            "startupProbe": _probe("/healthz", 19002, period=10, failures=30),
            "readinessProbe": _probe("/healthz", 19002, period=10, failures=3),
            "livenessProbe": _probe("/healthz", 19002, period=10, failures=3),
            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
            "securityContext": SECURITY,
        }
        return {
            "metadata": {
                "labels": {
                    "app.kubernetes.io/name": "envoy",
                    "app.kubernetes.io/component": "proxy",
                    "app.kubernetes.io/managed-by": "envoy-gateway",
                }
            },
            "spec": {
                "containers": [envoy, sidecar],
                "restartPolicy": "Always",
                "terminationGracePeriodSeconds": self.grace,
            },
        }

    # -- processes ---------------------------------------------------------------------

    def process_pod(self, workdir: Path, name: str, sidecar_liveness_period: float = 10.0) -> Pod:
        """The same pod as processes: Envoy's args as Envoy Gateway writes them (with a base
        id of its own), the sidecar's and the hook's with our flags naming the free ports
        and the pod's own directory."""
        p = self.ports
        workdir.mkdir(parents=True, exist_ok=True)
        args = [a.replace("$(ENVOY_POD_NAME)", name) for a in self.envoy_args()]
        ours = [
            "--admin-address",
            f"http://127.0.0.1:{p.admin}",
            "--control-socket",
            str(workdir / "shutdown-manager.sock"),
            "--ready-file",
            str(workdir / "shutdown-ready"),
        ]
        envoy = Container(
            name="envoy",
            argv=[
                envoy_binary(),
                *args,
                "--base-id",
                str(p.admin),
                "--log-path",
                str(workdir / "envoy.log"),
            ],
            pre_stop=HttpGetHook(port=p.sidecar, path="/shutdown/ready"),
            startup_probe=HttpProbe(port=p.ready, path="/ready", period=0.1),
            liveness_probe=HttpProbe(port=p.ready, path="/ready", period=10, failure_threshold=3),
        )
        sidecar = Container(
            name="shutdown-manager",
            argv=[*GATEWAY, *self.serve_args(), "--listen", f"127.0.0.1:{p.sidecar}", *ours],
            pre_stop=ExecHook([*GATEWAY, *self.hook_args(), *ours]),
            log_path=workdir / "shutdown-manager.log",
            startup_probe=HttpProbe(port=p.sidecar, path="/healthz", period=0.1),
            liveness_probe=HttpProbe(
                port=p.sidecar, path="/healthz", period=sidecar_liveness_period, failure_threshold=3
            ),
        )
        return Pod(name, [envoy, sidecar], grace_period=float(self.grace))

    def url(self, host: str, path: str = "/") -> str:
        return f"http://{host}:{self.ports.http}{path}"


def _socket(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _listener(name: str, address: str, port: int, hcm: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "address": _socket(address, port), "filter_chains": [{"filters": [hcm]}]}


def _hcm(prefix: str, routes: dict[str, Any], filters: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM_TYPE,
            "stat_prefix": prefix,
            "route_config": routes,
            "http_filters": filters,
        },
    }


def _route(cluster: str, match: dict[str, str]) -> dict[str, Any]:
    return {
        "virtual_hosts": [
            {
                "name": cluster,
                "domains": ["*"],
                "routes": [{"match": match, "route": {"cluster": cluster}}],
            }
        ]
    }


def _ready_filter() -> dict[str, Any]:
    """Envoy's health check filter answering /ready itself: 503 once the check fails."""
    return {
        "name": "envoy.filters.http.health_check",
        "typed_config": {
            "@type": HEALTH_CHECK_TYPE,
            "pass_through_mode": False,
            "headers": [{"name": ":path", "string_match": {"exact": "/ready"}}],
        },
    }


def _probe(path: str, port: int, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port, "scheme": "HTTP"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "successThreshold": 1,
        "timeoutSeconds": 1,
    }
