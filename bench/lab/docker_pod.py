"""Pods of real containers (Docker), made from the pod template of the rendered manifests,
so what is tested is what is deployed; the pod runner (bench/lab/pod.py) starts and stops
them as the kubelet does.

What the kubelet would do, done with the Docker engine:
* one network namespace per pod, held by a pause container (`sleep` from the base image);
  every container joins it, Service names resolve through the pause container's hosts file;
* each container's securityContext (user and group, fsGroup as a supplementary group,
  runAsNonRoot checked against the image, read-only root, capabilities, no privilege
  escalation, the runtime's default seccomp profile) and its CPU and memory limits;
* volumes: emptyDir (0777, `medium: Memory` a tmpfs of its sizeLimit), Secret volumes in the
  kubelet's `..data` layout with defaultMode and fsGroup, kept in step with their source
  (updated by one atomic swap, as the kubelet does), projected service-account volumes,
  hostPath;
* env with the downward API (pod name, namespace, uid, IP), command and args as Kubernetes
  maps them onto the image's entrypoint and cmd, exec hooks through `docker exec`, httpGet
  hooks, startup and liveness probes at the pod's IP, `$(VAR)` in command and args, signals
  through `docker kill`.

Readiness: `until_ready` waits for the pod's Ready condition (every readinessProbe), as a
rollout does before it takes the next pod down. Not here: image pulls (every image is built
by `make images`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from bench.lab.images import BASE_TAG
from bench.lab.pod import Container, ExecHook, Hook, HttpGetHook, HttpProbe, Pod, http_probe
from xds_server.certs.secret_volume import SecretVolume

NETWORK = "envoy-lifecycle-e2e"
SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
SECRET_PATIENCE = 120.0
"""Seconds a pod waits for a Secret it mounts to exist (the kubelet waits as long as it takes)."""
TOKEN = b"a-service-account-token"
"""What a projected token holds here (the FAKE API server takes any)."""
SYNC_EVERY = 0.2
"""Seconds between looks at a Secret's source (the kubelet's own sync is far slower)."""


def docker(*args: str, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])}: {done.stderr.strip()}")
    return done.stdout.strip()


def logs(container: Container) -> str:
    """Everything a container of a pod wrote (stdout and stderr), over its restarts."""
    ids = container.ids if isinstance(container, DockerContainer) else []
    return "".join(_logs(cid) for cid in ids)


def _logs(cid: str) -> str:
    done = subprocess.run(["docker", "logs", cid], capture_output=True, text=True, check=False)
    return done.stdout + done.stderr


def network_gateway(name: str = NETWORK) -> str:
    """The host's address on our own bridge network (created if missing)."""
    if not docker("network", "ls", "--quiet", "--filter", f"name=^{name}$"):
        docker("network", "create", "--driver", "bridge", name, check=False)  # a race is fine
    config = json.loads(docker("network", "inspect", name))[0]["IPAM"]["Config"][0]
    return str(config["Gateway"])


@dataclass
class Cluster:
    """What the pods of one test share: the network, Service names, Secrets' sources."""

    workdir: Path
    gateway: str
    network: str = NETWORK
    namespace: str = "envoy-lifecycle"
    hosts: dict[str, str] = field(default_factory=dict)
    """Service DNS names -> addresses, in every pod's hosts file."""
    secrets: dict[str, Path] = field(default_factory=dict)
    """Secret name -> a directory in the secret-volume layout holding its current data."""
    api: SecretSource | None = None
    """Where other Secrets come from, and what every pod reaches with in-cluster credentials
    (the kubelet's KUBERNETES_SERVICE_HOST/PORT, a service-account token, the API's CA)."""


class SecretSource(Protocol):
    """An API server as the kubelet sees it (tests/harness/fake_kube_api.py)."""

    host: str
    port: int
    ca: bytes

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...


class DockerContainer(Container):
    """A container of a pod: `docker run` into the pause container's network namespace;
    `running` is a `docker wait` still waiting."""

    def __init__(self, name: str, pod: str, image: str, flags: Callable[[], list[str]],
                 entrypoint: str | None, args: list[str]) -> None:  # fmt: skip
        super().__init__(name, [])
        self.pod, self.image, self.flags = pod, image, flags
        """`docker run` flags, made at each start (the pod's IP is known only then)."""
        self.entrypoint, self.args = entrypoint, args
        self.ids: list[str] = []
        self._status: int | None = None

    def start(self) -> None:
        name = f"{self.pod}-{self.name}-{self.restarts}"
        docker("rm", "--force", name, check=False)
        entry = ["--entrypoint", self.entrypoint] if self.entrypoint else []
        cid = docker("run", "--detach", "--name", name, *self.flags(), *entry, self.image,
                     *self.args)  # fmt: skip
        self.ids.append(cid)
        self._status = None
        self.proc = subprocess.Popen(["docker", "wait", cid], stdout=subprocess.PIPE)
        self.exited_at = None

    @property
    def id(self) -> str:
        return self.ids[-1]

    def signal(self, sig: int) -> None:
        if self.running:
            docker("kill", "--signal", str(int(sig)), self.id, check=False)

    @property
    def exit_status(self) -> int | None:
        if self.proc is None or self.proc.poll() is None:
            return None
        if self._status is None:
            assert self.proc.stdout is not None
            self._status = int(self.proc.stdout.read().strip() or -1)
        return self._status

    def exec_argv(self, argv: list[str]) -> list[str]:
        return ["docker", "exec", self.id, *argv]

    def remove(self) -> None:
        for cid in self.ids:
            docker("rm", "--force", cid, check=False)


class DockerPod(Pod):
    def __init__(self, name: str, template: dict[str, Any], cluster: Cluster) -> None:
        spec = template["spec"]
        self.name, self.cluster, self.spec = name, cluster, spec
        self.uid = str(uuid.uuid4())
        self.root = cluster.workdir / name
        self.prefix = f"{name}-{self.uid[:8]}"
        """Of every Docker object of this pod: test runs side by side never collide."""
        self.pause = f"{self.prefix}-pause"
        self.ip = ""
        self._volumes: dict[str, Path] = {}
        self._mounted: list[Path] = []
        self._sync: list[asyncio.Task[None]] = []
        build = ContainerBuilder(self)
        init: list[Container] = [build(c) for c in spec.get("initContainers", [])]
        regular: list[Container] = [build(c) for c in spec["containers"]]
        grace = float(spec.get("terminationGracePeriodSeconds", 30))
        policy = spec.get("restartPolicy", "Always")
        super().__init__(name, regular, grace, init, restart_policy=policy)

    @property
    def address(self) -> str:
        return self.ip

    @property
    def automount(self) -> bool:
        return bool(self.spec.get("automountServiceAccountToken", True)) and bool(self.cluster.api)

    async def start(self) -> None:
        await self._make_volumes()
        hosts = [
            a for host, ip in self.cluster.hosts.items() for a in ("--add-host", f"{host}:{ip}")
        ]
        docker("rm", "--force", self.pause, check=False)
        docker("run", "--detach", "--name", self.pause, "--network", self.cluster.network,
               *hosts, "--read-only", "--cap-drop", "ALL", "--user", "65532:65532",
               "--entrypoint", "sleep", BASE_TAG, "infinity")  # fmt: skip
        found = json.loads(docker("inspect", self.pause))[0]["NetworkSettings"]["Networks"]
        self.ip = str(found[self.cluster.network]["IPAddress"])
        await super().start()

    async def until_ready(self, timeout: float = 60) -> None:
        """The pod's Ready condition: every container's readinessProbe (httpGet) passes."""
        for spec in [*self.spec.get("initContainers", []), *self.spec["containers"]]:
            probe = spec.get("readinessProbe", {}).get("httpGet")
            if probe is not None:
                port = ContainerBuilder._port(spec, probe["port"])
                await until_answers(f"http://{self.ip}:{port}{probe['path']}", timeout)

    def kill(self) -> None:
        super().kill()
        for task in self._sync:
            task.cancel()
        for container in [*self.init_containers, *self.containers]:
            if isinstance(container, DockerContainer):
                container.remove()
        docker("rm", "--force", self.pause, check=False)
        for mount in self._mounted:
            subprocess.run(["umount", str(mount)], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- volumes --------------------------------------------------------------------

    @property
    def fs_group(self) -> int | None:
        group = self.spec.get("securityContext", {}).get("fsGroup")
        return None if group is None else int(group)

    def volume_path(self, name: str) -> Path:
        return self._volumes[name]

    async def _make_volumes(self) -> None:
        if self.automount:
            self._service_account(self.root / "volumes" / "kube-api-access")
        for volume in self.spec.get("volumes", []):
            path = self.root / "volumes" / volume["name"]
            path.mkdir(parents=True)
            self._volumes[volume["name"]] = path
            if "emptyDir" in volume:
                self._empty_dir(path, volume["emptyDir"] or {})
            elif "secret" in volume:
                await self._secret(path, volume["secret"])
            elif "projected" in volume:
                self._projected(path, volume["projected"])
            elif "hostPath" in volume:
                self._volumes[volume["name"]] = Path(volume["hostPath"]["path"])
            else:
                raise ValueError(f"volume {volume['name']}: kind not supported here")

    def _empty_dir(self, path: Path, spec: dict[str, Any]) -> None:
        if spec.get("medium") == "Memory":
            size = spec.get("sizeLimit", "64Mi").replace("i", "").lower()
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           check=True)  # fmt: skip
            self._mounted.append(path)
        path.chmod(0o777)

    async def _secret(self, path: Path, spec: dict[str, Any]) -> None:
        name, mode = spec["secretName"], int(spec.get("defaultMode", 0o644))
        target = SecretVolume(path)
        if name in self.cluster.secrets:
            source = SecretVolume(self.cluster.secrets[name])
            self._project(source, target, mode)
            task = self._keep_in_step(source, target, mode)
        else:
            version = await self._api_secret(name, None)
            task = self._follow_api(name, version, target, mode)
        self._sync.append(asyncio.create_task(task))

    async def _api_secret(self, name: str, after: str | None) -> str:
        """Wait for the Secret (a version other than `after`), write nothing yet."""
        api = self.cluster.api
        if api is None:
            raise ValueError(f"secret {name}: no source and no API server")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SECRET_PATIENCE
        while True:
            found = api.secret(self.cluster.namespace, name)
            if found is not None and found["metadata"]["resourceVersion"] != after:
                return str(found["metadata"]["resourceVersion"])
            if after is None and loop.time() > deadline:
                raise TimeoutError(f"secret {name} never appeared")
            await asyncio.sleep(SYNC_EVERY)

    async def _follow_api(self, name: str, version: str, target: SecretVolume, mode: int) -> None:
        """The kubelet's Secret volume: written now, and again (one swap) on every change."""
        assert self.cluster.api is not None
        while True:
            found = self.cluster.api.secret(self.cluster.namespace, name)
            if found is not None:
                files = {k: base64.b64decode(v) for k, v in (found.get("data") or {}).items()}
                target.write(files, mode=mode, group=self.fs_group)
            version = await self._api_secret(name, version)

    def _project(self, source: SecretVolume, target: SecretVolume, mode: int) -> str | None:
        version = source.read()
        if version is None:
            raise ValueError(f"secret source {source.where} holds no data")
        target.write(version.files, mode=mode, group=self.fs_group)
        return version.name

    async def _keep_in_step(self, source: SecretVolume, target: SecretVolume, mode: int) -> None:
        """The kubelet's Secret update: a new version swapped in whole when the source moves."""
        seen = source.current()
        while True:
            await asyncio.sleep(SYNC_EVERY)
            now = source.current()
            if now != seen:
                with contextlib.suppress(ValueError, OSError):
                    self._project(source, target, mode)
                    seen = now

    def _service_account(self, path: Path) -> None:
        """The kubelet's automounted service-account volume."""
        path.mkdir(parents=True)
        self._volumes["kube-api-access"] = path
        assert self.cluster.api is not None
        files = {"token": TOKEN, "ca.crt": self.cluster.api.ca,
                 "namespace": self.cluster.namespace.encode()}  # fmt: skip
        SecretVolume(path).write(files, mode=0o444, group=self.fs_group)

    def _projected(self, path: Path, spec: dict[str, Any]) -> None:
        files: dict[str, bytes] = {}
        for item in spec["sources"]:
            if "serviceAccountToken" in item:
                files[item["serviceAccountToken"]["path"]] = TOKEN
            elif "configMap" in item:  # kube-root-ca.crt: the API server's CA
                ca = self.cluster.api.ca if self.cluster.api else b""
                for key in item["configMap"].get("items", []):
                    files[key["path"]] = ca
            elif "downwardAPI" in item:
                for key in item["downwardAPI"]["items"]:
                    files[key["path"]] = self.field(key["fieldRef"]["fieldPath"]).encode()
        SecretVolume(path).write(files, mode=int(spec.get("defaultMode", 0o644)),
                                 group=self.fs_group)  # fmt: skip

    def field(self, path: str) -> str:
        """A downward-API field of this pod."""
        values = {
            "metadata.name": self.name, "metadata.namespace": self.cluster.namespace,
            "metadata.uid": self.uid, "status.podIP": self.ip, "spec.nodeName": "docker",
        }  # fmt: skip
        if path.startswith(("metadata.annotations[", "metadata.labels[")):
            return ""  # the pods here carry none
        return values[path]


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's `$(VAR)` expansion of command and args: a defined variable is replaced,
    `$$` is a literal `$`, anything else is left as written."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
        lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]),
        text,
    )


async def until_answers(url: str, timeout: float = 60) -> None:
    """Until `url` answers 2xx or 3xx, as an httpGet probe counts success."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient(trust_env=False, timeout=1) as client:
        while not await http_probe(client, url):
            if loop.time() > deadline:
                raise TimeoutError(f"no answer from {url} within {timeout} s")
            await asyncio.sleep(0.1)


class ContainerBuilder:
    """A container of the pod template -> a DockerContainer, as the kubelet would run it."""

    def __init__(self, pod: DockerPod) -> None:
        self.pod = pod

    def __call__(self, spec: dict[str, Any]) -> DockerContainer:
        env = dict(self._variables(spec))
        command = [expand(x, env) for x in spec.get("command") or []]
        args = [expand(x, env) for x in spec.get("args") or []]
        entrypoint = command[0] if command else None
        argv = [*command[1:], *args]
        security = self._security(spec)  # checked now: a bad spec fails before anything runs

        def flags() -> list[str]:
            return ["--network", f"container:{self.pod.pause}", *security,
                    *self._resources(spec), *self._mounts(spec), *self._env(spec)]  # fmt: skip

        container = DockerContainer(spec["name"], self.pod.prefix, spec["image"], flags,
                                    entrypoint, argv)  # fmt: skip
        container.restart_policy = spec.get("restartPolicy")
        container.pre_stop = self._hook(spec, spec.get("lifecycle", {}).get("preStop"))
        container.startup_probe = self._probe(spec, spec.get("startupProbe"))
        container.liveness_probe = self._probe(spec, spec.get("livenessProbe"))
        return container

    def _probe(self, spec: dict[str, Any], probe: dict[str, Any] | None) -> HttpProbe | None:
        if probe is None:
            return None
        return HttpProbe(
            port=self._port(spec, probe["httpGet"]["port"]), path=probe["httpGet"]["path"],
            period=float(probe.get("periodSeconds", 10)),
            failure_threshold=int(probe.get("failureThreshold", 3)),
            timeout=float(probe.get("timeoutSeconds", 1)),
        )  # fmt: skip

    def _variables(self, spec: dict[str, Any]) -> list[tuple[str, str]]:
        """The container's environment as the kubelet sets it (downward API resolved)."""
        found = []
        api = self.pod.cluster.api
        if api is not None:  # the kubelet's variables for the `kubernetes` Service
            found += [("KUBERNETES_SERVICE_HOST", api.host),
                      ("KUBERNETES_SERVICE_PORT", str(api.port))]  # fmt: skip
        for var in spec.get("env", []):
            if "value" in var:
                value = str(var["value"])
            else:
                value = self.pod.field(var["valueFrom"]["fieldRef"]["fieldPath"])
            found.append((var["name"], value))
        return found

    def _env(self, spec: dict[str, Any]) -> list[str]:
        return [flag for name, value in self._variables(spec)
                for flag in ("--env", f"{name}={value}")]  # fmt: skip

    def _security(self, spec: dict[str, Any]) -> list[str]:
        pod = self.pod.spec.get("securityContext", {})
        own = spec.get("securityContext", {})
        user, group = (
            own.get("runAsUser", pod.get("runAsUser")),
            own.get("runAsGroup", pod.get("runAsGroup")),
        )
        flags: list[str] = []
        if user is not None:
            flags += ["--user", f"{user}:{group if group is not None else user}"]
        elif own.get("runAsNonRoot", pod.get("runAsNonRoot")):
            image_user = docker("image", "inspect", "--format", "{{.Config.User}}", spec["image"])
            if image_user.split(":")[0] in ("", "0", "root"):
                raise ValueError(f"{spec['name']}: runAsNonRoot and the image runs as root")
        if self.pod.fs_group is not None:
            flags += ["--group-add", str(self.pod.fs_group)]
        if own.get("readOnlyRootFilesystem"):
            flags.append("--read-only")
        for cap in own.get("capabilities", {}).get("drop", []):
            flags += ["--cap-drop", cap]
        for cap in own.get("capabilities", {}).get("add", []):
            flags += ["--cap-add", cap]
        if own.get("allowPrivilegeEscalation") is False:
            flags += ["--security-opt", "no-new-privileges"]
        seccomp = own.get("seccompProfile", pod.get("seccompProfile", {})).get("type")
        if seccomp == "Unconfined":
            flags += ["--security-opt", "seccomp=unconfined"]
        return flags

    def _resources(self, spec: dict[str, Any]) -> list[str]:
        limits = spec.get("resources", {}).get("limits", {})
        flags = []
        if "cpu" in limits:
            flags += ["--cpus", str(cpu_cores(str(limits["cpu"])))]
        if "memory" in limits:
            flags += ["--memory", str(memory_bytes(str(limits["memory"])))]
        return flags

    def _mounts(self, spec: dict[str, Any]) -> list[str]:
        flags = []
        for mount in spec.get("volumeMounts", []):
            if "subPath" in mount:
                raise ValueError(f"{spec['name']}: subPath mounts are not supported here")
            source = self.pod.volume_path(mount["name"])
            suffix = ":ro" if mount.get("readOnly") else ""
            flags += ["--volume", f"{source}:{mount['mountPath']}{suffix}"]
        mounted = {m["mountPath"] for m in spec.get("volumeMounts", [])}
        if self.pod.automount and SERVICE_ACCOUNT not in mounted:
            flags += ["--volume", f"{self.pod.volume_path('kube-api-access')}:{SERVICE_ACCOUNT}:ro"]
        return flags

    def _hook(self, spec: dict[str, Any], handler: dict[str, Any] | None) -> Hook | None:
        if handler is None:
            return None
        if "exec" in handler:
            return ExecHook(list(handler["exec"]["command"]))
        get = handler["httpGet"]
        return HttpGetHook(port=self._port(spec, get["port"]), path=get["path"])

    @staticmethod
    def _port(spec: dict[str, Any], port: int | str) -> int:
        if isinstance(port, int):
            return port
        return int(next(p["containerPort"] for p in spec.get("ports", []) if p["name"] == port))


def cpu_cores(text: str) -> float:
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def memory_bytes(text: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)
