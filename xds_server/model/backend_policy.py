"""What a Service says about its own lifecycle: per-Service overrides of how Envoy retries,
keeps idle connections and warms new endpoints, as annotations (docs/xds.md, "Backends").

An annotation that cannot be read rejects the routes to that Service with a line naming the
annotation and what it wanted, as any other bad input: a typo never silently becomes a
default nobody asked for.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from xds_server.model.types import BackendPolicy, Rejected

PREFIX = "envoy-lifecycle.io/"
RETRIES = PREFIX + "retries"
RESET_METHODS = PREFIX + "retry-reset-methods"
IDLE_TIMEOUT = PREFIX + "upstream-idle-timeout"
SLOW_START = PREFIX + "slow-start-window"
H2C = "kubernetes.io/h2c"
"""The appProtocol of a Service port spoken as HTTP/2 without TLS (KEP-3726)."""

_DURATION = re.compile(r"([0-9]{1,6})(ms|s|m)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000}
_METHOD = re.compile(r"[A-Z]{1,20}")
MAX_RETRIES = 10
MAX_DURATION_MS = 3_600_000


def _duration_ms(text: str) -> int:
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError("a duration such as 4s, 500ms or 1m")
    total = sum(int(n) * _UNIT_MS[u] for n, u in parts)
    if total > MAX_DURATION_MS:
        raise ValueError("at most 1h")
    return total


def _retries(text: str) -> int:
    if not text.isdigit() or int(text) > MAX_RETRIES:
        raise ValueError(f"a number of retries from 0 to {MAX_RETRIES}")
    return int(text)


def _methods(text: str) -> tuple[str, ...]:
    methods = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not all(_METHOD.fullmatch(m) for m in methods):
        raise ValueError("HTTP methods in capitals separated by commas (empty: none)")
    return methods


_READERS: dict[str, tuple[Callable[[str], Any], Callable[[BackendPolicy, Any], BackendPolicy]]] = {
    RETRIES: (_retries, lambda p, v: replace(p, retry=replace(p.retry, attempts=v))),
    RESET_METHODS: (_methods, lambda p, v: replace(p, retry=replace(p.retry, reset_methods=v))),
    IDLE_TIMEOUT: (_duration_ms, lambda p, v: replace(p, idle_timeout_ms=v)),
    SLOW_START: (_duration_ms, lambda p, v: replace(p, slow_start_ms=v)),
}
"""Annotation -> (read its text, put the value in a policy)."""


def policy_of(service: Mapping[str, Any], port: Mapping[str, Any]) -> BackendPolicy:
    """The policy a Service asks for at one of its ports (defaults where it says nothing)."""
    annotations = (service.get("metadata") or {}).get("annotations") or {}
    policy = BackendPolicy(http2=port.get("appProtocol") == H2C)
    for name, (read, put) in _READERS.items():
        text = annotations.get(name)
        if text is None:
            continue
        try:
            policy = put(policy, read(str(text).strip()))
        except ValueError as exc:
            raise Rejected(f"annotation {name}: {str(text)[:64]!r} is not {exc}") from None
    return policy
