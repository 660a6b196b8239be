"""An HTTPRoute's rules -> GatewayRoutes: each match with its rule's backends, filters and
timeouts, ranked by the spec's precedence; and the route's ResolvedRefs condition.

Something the spec allows but this controller does not serve (an unknown filter, a path
match type) rejects the whole route with UnsupportedValue: serving it without would route
traffic other than as asked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from xds_server.model.backend_policy import MAX_RETRIES
from xds_server.model.gateway import refs
from xds_server.model.gateway.types import (
    EXACT,
    PREFIX,
    REGEX,
    GatewayPart,
    GatewayRoute,
    HeaderEdits,
    Match,
    Mirror,
    Redirect,
    Rewrite,
    WeightedBackend,
)
from xds_server.model.ingress import age_order
from xds_server.model.types import Rejected, RetrySettings, describe
from xds_server.sources.objects import KubeObject

HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_|~`]+$")
REDIRECT_CODES = (301, 302, 303, 307, 308)
DURATION = re.compile(r"^(?:[0-9]{1,5}(?:h|m|s|ms)){1,4}$")
DURATION_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")
UNIT_MS = {"h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}
MATCH_TYPES = (EXACT, REGEX)

ResolvedRefs = tuple[bool, str, str]


@dataclass
class Compiled:
    routes: list[GatewayRoute] | None
    """None: the route asks for something not served (`unsupported` says what)."""
    unsupported: str
    resolved: ResolvedRefs


@dataclass(frozen=True)
class _Filters:
    request_headers: HeaderEdits = field(default_factory=HeaderEdits)
    response_headers: HeaderEdits = field(default_factory=HeaderEdits)
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None
    mirrors: tuple[Mirror, ...] = ()


class _Refs:
    """The first reference problem of a route: its ResolvedRefs condition."""

    def __init__(self) -> None:
        self.problem: refs.Problem | None = None

    def note(self, problem: refs.Problem | None) -> None:
        self.problem = self.problem or problem

    @property
    def condition(self) -> ResolvedRefs:
        if self.problem is None:
            return (True, "ResolvedRefs", "every reference resolved")
        return (False, *self.problem)


def compile_route(route: KubeObject, lookup: refs.Lookup, part: GatewayPart) -> Compiled:
    rules = [r for r in (route.body.get("spec") or {}).get("rules") or [{}] if isinstance(r, dict)]
    found: list[GatewayRoute] = []
    problems = _Refs()
    try:
        for index, rule in enumerate(rules or [{}]):
            found += _rule(route, rule, index, lookup, part, problems)
    except Rejected as exc:
        return Compiled(None, str(exc), problems.condition)
    return Compiled(found, "", problems.condition)


def _rule(
    route: KubeObject,
    rule: dict[str, Any],
    index: int,
    lookup: refs.Lookup,
    part: GatewayPart,
    problems: _Refs,
) -> list[GatewayRoute]:
    where = f"rules[{index}]"
    backends = []
    for number, ref in enumerate(rule.get("backendRefs") or []):
        if not isinstance(ref, dict):
            continue
        at = f"{where}.backendRefs[{number}]"
        cluster, problem = refs.backend(route, ref, lookup, part, at)
        problems.note(problem)
        edits = _backend_filters(ref.get("filters") or [], at)
        backends.append(WeightedBackend(cluster, int(ref.get("weight", 1)), edits))
    filters = _filters(route, rule.get("filters") or [], where, lookup, part, problems)
    timeout = _timeout(rule.get("timeouts"), where)
    retry = _retry(rule.get("retry"), backends, part, where)
    age, origin = age_order(route), describe(route)
    made = []
    for number, match in enumerate(rule.get("matches") or [{}]):
        parsed = _match(match if isinstance(match, dict) else {}, f"{where}.matches[{number}]")
        _prefix_replacement_fits(filters, parsed, f"{where}.matches[{number}]")
        made.append(
            GatewayRoute(
                parsed,
                tuple(backends),
                filters.request_headers,
                filters.response_headers,
                filters.redirect,
                filters.rewrite,
                filters.mirrors,
                timeout,
                _rank(parsed, (age, index, number)),
                origin,
                retry,
            )
        )
    return made


def _prefix_replacement_fits(filters: _Filters, match: Match, where: str) -> None:
    """ReplacePrefixMatch replaces the matched prefix: a rule matching an exact path or a
    regular expression has none (the API's validation refuses it too)."""
    paths = [x.path for x in (filters.redirect, filters.rewrite) if x is not None]
    if any(p and p[0] == "ReplacePrefixMatch" for p in paths) and match.path_kind != PREFIX:
        raise Rejected(f"{where}: ReplacePrefixMatch needs a PathPrefix match")


def _rank(match: Match, order: tuple[Any, ...]) -> tuple[Any, ...]:
    """The spec's precedence: Exact, then the longest prefix (a regular expression after
    every prefix: the spec leaves it to implementations), method, most headers, most query
    parameters, then the route's age and name and the rule and match order."""
    kind = {EXACT: 0, PREFIX: 1}.get(match.path_kind, 2)
    return (
        kind,
        -len(match.path),
        0 if match.method else 1,
        -len(match.headers),
        -len(match.query),
        *order,
    )


def _match(spec: dict[str, Any], where: str) -> Match:
    path = spec.get("path") or {}
    kind = path.get("type", PREFIX)
    value = str(path.get("value", "/"))
    if kind not in (EXACT, PREFIX, REGEX):
        raise Rejected(f"{where}.path: {kind} matches are not supported")
    if kind == REGEX:
        _regex(value, f"{where}.path")
    elif not value.startswith("/"):
        raise Rejected(f"{where}.path: {value!r} must start with /")
    if kind == PREFIX:
        value = value.rstrip("/") or "/"
    headers = tuple(
        sorted(_value_match(h, f"{where}.headers", lower=True) for h in spec.get("headers") or [])
    )
    for _, name, _ in headers:
        _header_name(name, f"{where}.headers")
    query = tuple(
        sorted(_value_match(q, f"{where}.queryParams") for q in spec.get("queryParams") or [])
    )
    method = spec.get("method")
    return Match(value, kind, str(method) if method else None, headers, query)


def _value_match(item: Any, where: str, lower: bool = False) -> tuple[str, str, str]:
    if not isinstance(item, dict) or not item.get("name"):
        raise Rejected(f"{where}: a match needs a name")
    kind = str(item.get("type", EXACT))
    if kind not in MATCH_TYPES:
        raise Rejected(f"{where}: {kind} matches are not supported")
    value = str(item.get("value", ""))
    if kind == REGEX:
        _regex(value, where)
    name = str(item["name"])
    return (kind, name.lower() if lower else name, value)


def _regex(value: str, where: str) -> None:
    """Refused here when even Python's engine cannot read it (Envoy's RE2 is stricter:
    what it refuses is a NACK, parked and reported like any other)."""
    try:
        re.compile(value)
    except re.error as exc:
        raise Rejected(f"{where}: {value!r} is not a regular expression ({exc})") from None


def _retry(
    spec: Any, backends: list[WeightedBackend], part: GatewayPart, where: str
) -> RetrySettings:
    """How the rule retries: as its Services say (when all its backends agree; ours
    otherwise), then as its `retry` field says: `attempts` (at most MAX_RETRIES), `backoff`,
    and `codes` retried for any method (the route owner asked). A reset is still retried
    only for the methods the settings allow: the spec's "SHOULD retry on connection errors"
    is kept for the errors where the request never reached the app."""
    policies = {part.upstreams[b.cluster].policy.retry for b in backends if b.cluster is not None}
    retry = policies.pop() if len(policies) == 1 else RetrySettings()
    if not isinstance(spec, dict):
        return retry
    if spec.get("attempts") is not None:
        retry = replace(retry, attempts=min(int(spec["attempts"]), MAX_RETRIES))
    if spec.get("backoff") is not None:
        retry = replace(
            retry, backoff_ms=duration_ms(str(spec["backoff"]), f"{where}.retry.backoff")
        )
    codes = tuple(sorted({int(c) for c in spec.get("codes") or []}))
    return replace(retry, codes=codes)


def _timeout(spec: Any, where: str) -> int | None:
    """The rule's timeout in ms: the shorter of `request` and `backendRequest` (one bound for
    the request and its retries, never longer than either asks); "0s" turns it off."""
    if not isinstance(spec, dict):
        return None
    found = [
        duration_ms(str(spec[key]), f"{where}.timeouts.{key}")
        for key in ("request", "backendRequest")
        if spec.get(key) is not None
    ]
    positive = [value for value in found if value > 0]
    if not found:
        return None
    return min(positive) if positive else 0


def duration_ms(text: str, where: str) -> int:
    """A Gateway API duration (GEP-2257: `1h`, `10m30s`, `500ms`) in milliseconds."""
    if not DURATION.fullmatch(text):
        raise Rejected(f"{where}: {text!r} is not a duration like 1h2m3s or 500ms")
    return sum(int(n) * UNIT_MS[unit] for n, unit in DURATION_PART.findall(text))


def _backend_filters(items: list[Any], where: str) -> HeaderEdits:
    edits = HeaderEdits()
    for number, item in enumerate(items):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind != "RequestHeaderModifier":
            raise Rejected(f"{where}.filters[{number}]: backend filter {kind} is not supported")
        edits = _edits(item.get("requestHeaderModifier"), f"{where}.filters[{number}]")
    return edits


def _filters(
    route: KubeObject,
    items: list[Any],
    where: str,
    lookup: refs.Lookup,
    part: GatewayPart,
    problems: _Refs,
) -> _Filters:
    found = _Filters()
    for number, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        at = f"{where}.filters[{number}]"
        if kind == "RequestHeaderModifier":
            found = replace(found, request_headers=_edits(item.get("requestHeaderModifier"), at))
        elif kind == "ResponseHeaderModifier":
            found = replace(found, response_headers=_edits(item.get("responseHeaderModifier"), at))
        elif kind == "RequestRedirect":
            found = replace(found, redirect=_redirect(item.get("requestRedirect") or {}, at))
        elif kind == "URLRewrite":
            found = replace(found, rewrite=_rewrite(item.get("urlRewrite") or {}))
        elif kind == "RequestMirror":
            mirror = _mirror(route, item.get("requestMirror") or {}, at, lookup, part, problems)
            if mirror is not None:
                found = replace(found, mirrors=(*found.mirrors, mirror))
        else:
            raise Rejected(f"{at}: filter {kind} is not supported")
    return found


def _mirror(
    route: KubeObject,
    spec: dict[str, Any],
    where: str,
    lookup: refs.Lookup,
    part: GatewayPart,
    problems: _Refs,
) -> Mirror | None:
    """A copy of each request (or of `percent`/`fraction` of them) to another backend;
    its answers are dropped. A reference that cannot be used is reported, not mirrored."""
    ref = spec.get("backendRef") or {}
    cluster, problem = refs.backend(route, ref, lookup, part, f"{where}.backendRef")
    problems.note(problem)
    if cluster is None:
        return None
    percent = 100.0
    if spec.get("percent") is not None:
        percent = float(spec["percent"])
    elif isinstance(spec.get("fraction"), dict):
        fraction = spec["fraction"]
        percent = (
            100.0
            * float(fraction.get("numerator", 0))
            / float(fraction.get("denominator", 100) or 100)
        )
    return Mirror(cluster, max(0.0, min(100.0, percent)))


def _edits(spec: Any, where: str) -> HeaderEdits:
    spec = spec if isinstance(spec, dict) else {}

    def pairs(name: str) -> tuple[tuple[str, str], ...]:
        items = [x for x in spec.get(name) or [] if isinstance(x, dict)]
        for item in items:
            _header_name(str(item.get("name")), where)
        return tuple((str(x["name"]), str(x.get("value", ""))) for x in items)

    remove = tuple(str(x) for x in spec.get("remove") or [])
    for name in remove:
        _header_name(name, where)
    return HeaderEdits(pairs("set"), pairs("add"), remove)


def _header_name(name: str, where: str) -> None:
    if not HEADER_NAME.fullmatch(name):
        raise Rejected(f"{where}: {name!r} is not a valid header name")


def _redirect(spec: dict[str, Any], where: str) -> Redirect:
    status = int(spec.get("statusCode", 302))
    if status not in REDIRECT_CODES:
        raise Rejected(f"{where}: redirect status {status} is not one of {REDIRECT_CODES}")
    return Redirect(
        scheme=spec.get("scheme"),
        hostname=spec.get("hostname"),
        port=int(spec["port"]) if spec.get("port") is not None else None,
        path=_path_modifier(spec.get("path")),
        status=status,
    )


def _rewrite(spec: dict[str, Any]) -> Rewrite:
    return Rewrite(hostname=spec.get("hostname"), path=_path_modifier(spec.get("path")))


def _path_modifier(spec: Any) -> tuple[str, str] | None:
    if not isinstance(spec, dict):
        return None
    kind = spec.get("type")
    if kind == "ReplaceFullPath":
        return (kind, str(spec.get("replaceFullPath", "/")))
    if kind == "ReplacePrefixMatch":
        return (kind, str(spec.get("replacePrefixMatch", "/")))
    return None
