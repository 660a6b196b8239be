"""The model: a small typed picture of what should be routed where, whatever Kubernetes
API said it (Ingress today). Translation reads only these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xds_server.sources.objects import KubeObject

if TYPE_CHECKING:
    from xds_server.model.gateway import GatewayPart

EXACT, PREFIX = "Exact", "Prefix"


@dataclass(frozen=True, order=True)
class Endpoint:
    address: str
    port: int
    draining: bool = False
    """Serving but terminating: Envoy sends it no new request (in-flight ones finish)."""


SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE")
"""RFC 9110's safe methods: the ones a request may be sent twice without asking."""


@dataclass(frozen=True)
class RetrySettings:
    """How a route retries. Whatever is set here, a request is retried on a reset only when
    its method is in `reset_methods`: a reset can come after the app processed it."""

    attempts: int = 2
    reset_methods: tuple[str, ...] = SAFE_METHODS
    codes: tuple[int, ...] = ()
    """Response codes retried (the route owner asked for them: any method)."""
    backoff_ms: int | None = None
    """The first wait between attempts; None: Envoy's 25 ms."""


@dataclass(frozen=True)
class BackendPolicy:
    """What a Service says about its own lifecycle (annotations, docs/xds.md)."""

    retry: RetrySettings = RetrySettings()
    idle_timeout_ms: int = 4000
    """Upstream connections idle longer are closed by Envoy: before the backend's own
    keep-alive timeout (Node, uvicorn, gunicorn: 5 s), so the backend never closes one
    just as Envoy writes a request on it."""
    slow_start_ms: int = 0
    """New endpoints get their share of traffic over this window (0: at once)."""
    http2: bool = False
    """The Service port's appProtocol is `kubernetes.io/h2c`: HTTP/2 without TLS."""


@dataclass(frozen=True)
class Backend:
    """A cluster's content: its endpoints and how to treat them."""

    endpoints: tuple[Endpoint, ...]
    policy: BackendPolicy = BackendPolicy()
    fallback: bool = False
    """No endpoint is ready: the serving, terminating ones are used (KEP-1669)."""
    triggered: float | None = field(default=None, compare=False)
    """The newest `endpoints.kubernetes.io/last-change-trigger-time` of its slices."""


@dataclass(frozen=True)
class Upstream:
    """A Service port as Envoy sees it: one cluster and its ready endpoints."""

    namespace: str
    service: str
    port: str  # the Service port's name, or its number as text
    policy: BackendPolicy = BackendPolicy()

    @property
    def cluster(self) -> str:
        return f"{self.namespace}/{self.service}/{self.port}"


@dataclass(frozen=True)
class Route:
    path: str
    kind: str  # EXACT or PREFIX
    upstream: Upstream
    origin: str = ""  # the object it comes from, as rejections name it

    @property
    def precedence(self) -> tuple[int, int]:
        """Sort key: longer paths first, Exact before Prefix at equal length."""
        return (-len(self.path), 0 if self.kind == EXACT else 1)


@dataclass
class Host:
    name: str  # exact host, `*.domain` (one label), or `*` (what matches no rule's host)
    routes: list[Route] = field(default_factory=list)
    default: Route | None = None
    """Where a request for this host that matches none of its paths goes: the defaultBackend
    of the oldest Ingress with a rule for this host and a defaultBackend; None: 404."""
    wildcard: bool = field(init=False)
    """`*.domain`: derived once (asked for every route of every host on every change)."""

    def __post_init__(self) -> None:
        self.wildcard = self.name.startswith("*.")


@dataclass(frozen=True)
class TlsBinding:
    hosts: tuple[str, ...]  # SNI names; none: the default certificate
    secret: str  # namespace/name
    origin: str = ""  # the object that asked for it, as rejections name it


@dataclass(frozen=True)
class TlsSecret:
    name: str  # namespace/name
    certificate: bytes
    key: bytes
    origin: str = ""


@dataclass
class Model:
    hosts: dict[str, Host] = field(default_factory=dict)
    clusters: dict[str, Backend] = field(default_factory=dict)
    tls: list[TlsBinding] = field(default_factory=list)
    secrets: dict[str, TlsSecret] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    served: set[tuple[str, str]] = field(default_factory=set)
    """(namespace, name) of every Ingress accepted: whose status the leader writes."""
    gateway: GatewayPart | None = None
    """The Gateway API part (None: no Gateway API object seen)."""

    def sorted_hosts(self) -> list[Host]:
        """Exact hosts, then wildcards, then the catch-all, each with routes in precedence."""

        def rank(host: Host) -> tuple[int, str]:
            return (2 if host.name == "*" else 1 if host.name.startswith("*.") else 0, host.name)

        return sorted(self.hosts.values(), key=rank)


class Rejected(ValueError):
    """An object that cannot be used; the message names what is wrong."""


def describe(obj: KubeObject) -> str:
    """How a rejection names an object: its source, kind and namespace/name."""
    return f"{obj.source}: {obj.kind} {obj.namespace}/{obj.name}"
