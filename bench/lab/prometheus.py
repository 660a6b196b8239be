"""A real Prometheus (Debian's package) on loopback, scraping the processes a test or the
demo started, with our rules loaded: what an operator's Prometheus would see."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.lab.envoy import free_port, stop_process
from bench.lab.wait import until

SCRAPE_S = 1.0


@dataclass(frozen=True)
class Target:
    job: str
    address: str  # host:port
    path: str
    labels: dict[str, str] = field(default_factory=dict)
    """What a PodMonitor adds: the pod's namespace and name (the alerts join on them)."""


def pod_targets(sidecar_port: int, probe_port: int, xds_port: int, pod: str) -> list[Target]:
    """An Envoy pod (its sidecar, Envoy's stats through the probe listener) and xds-server,
    labelled as the PodMonitors label them (namespace `shop`)."""
    labels = {"namespace": "shop", "pod": pod}
    return [
        Target("sidecar", f"127.0.0.1:{sidecar_port}", "/metrics", labels),
        Target("envoy", f"127.0.0.1:{probe_port}", "/stats/prometheus", labels),
        Target("xds", f"127.0.0.1:{xds_port}", "/metrics", {**labels, "pod": "xds-0"}),
    ]


def binary() -> str | None:
    return shutil.which("prometheus")


class Prometheus:
    def __init__(self, workdir: Path, targets: list[Target], rules: Path | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.targets = targets
        self.rules = rules
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        interval = f"{int(SCRAPE_S * 1000)}ms"
        return {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(self.rules)] if self.rules else [],
            "scrape_configs": [
                {
                    "job_name": t.job,
                    "metrics_path": t.path,
                    "static_configs": [{"targets": [t.address], "labels": t.labels}],
                }
                for t in self.targets
            ],
        }

    async def start(self) -> Prometheus:
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(self.config()))
        prometheus = binary()
        assert prometheus is not None, "prometheus missing: `make setup` installs it"
        log = (self.workdir / "prometheus.log").open("ab")
        self.proc = subprocess.Popen(
            [
                prometheus,
                f"--config.file={path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        await until(self._up, 30, "Prometheus scraping every target")
        return self

    async def _up(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, self.log()
        try:
            body = await self.api("/api/v1/targets")
        except httpx.HTTPError:
            return False
        active = body["data"]["activeTargets"]
        return len(active) == len(self.targets) and all(t["health"] == "up" for t in active)

    async def api(self, path: str, **params: str) -> dict[str, Any]:
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            response = await client.get(self.url + path, params=params)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    async def query_range(self, expr: str, start: float, end: float) -> list[Any]:
        """The series `expr` gives over [start, end], a sample a scrape."""
        body = await self.api(
            "/api/v1/query_range", query=expr, start=str(start), end=str(end), step=str(SCRAPE_S)
        )
        result: list[Any] = body["data"]["result"]
        return result

    async def firing(self) -> list[str]:
        body = await self.api("/api/v1/alerts")
        return [a["labels"]["alertname"] for a in body["data"]["alerts"] if a["state"] == "firing"]

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc)


def now() -> float:
    return time.time()
