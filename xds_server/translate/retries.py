"""Retries that cannot run a request twice in the app, for every route of every kind.

A request is retried, on another host, when it never reached the app: the connection was
refused or failed (`connect-failure`), the HTTP/2 stream was refused (`refused-stream`), or
the connection reset before the request went out (`reset-before-request`). Any method.

A reset after the request went out (`reset`: the idle keep-alive race, a backend exiting)
may come after the app processed it: retried only for the methods the settings name (RFC
9110's safe ones by default). Envoy's retry policy cannot tell methods apart, so such a
route becomes two: the same match for those methods first, with `reset`, then the route
for the rest, without. A route whose own match names a method stays one.

The policy most of a virtual host's routes carry is sent once, on the virtual host, and left
off those routes (Envoy takes a route's own policy instead of the host's, whole, never
merged): the same retries in about a third fewer bytes per route, which every proxy is sent.
"""

from __future__ import annotations

import re
from collections import Counter

from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import wrappers_pb2

from xds_server.model.types import RetrySettings
from xds_server.translate.common import duration, pack

NEVER_REACHED = "connect-failure,refused-stream,reset-before-request"
"""The triggers where the app never saw the request: safe for any method."""
HOST_SELECTION_ATTEMPTS = 3
"""Hosts tried per retry before a previous one is taken again (a single-replica Service)."""


def variants(retry: RetrySettings | None, method: str | None) -> tuple[bool, ...]:
    """The Envoy routes a route becomes, as whether each retries resets, in order. `retry`
    None: the route sends nothing upstream (a redirect, a direct response)."""
    if retry is None or retry.attempts == 0 or not retry.reset_methods:
        return (False,)
    if method is not None:
        return (method in retry.reset_methods,)
    return (True, False)


def with_retries(
    made: route_components_pb2.Route, retry: RetrySettings | None, method: str | None
) -> list[route_components_pb2.Route]:
    """The route as Envoy gets it: with its retry policy, split by method when needed."""
    if retry is None or not made.HasField("route"):
        return [made]
    found = []
    shape = variants(retry, method)
    for reset in shape:
        route = route_components_pb2.Route()
        route.CopyFrom(made)
        policy = retry_policy(retry, reset)
        if policy is not None:
            route.route.retry_policy.CopyFrom(policy)
        if reset and method is None:
            route.match.headers.append(methods_matcher(retry.reset_methods))
        found.append(route)
    return found


def hoisted(vhost: route_components_pb2.VirtualHost) -> route_components_pb2.VirtualHost:
    """The virtual host with the retry policy most of its routes carry moved onto it. Only
    when every route that forwards carries one: a route without would inherit it."""
    forwarding = [route for route in vhost.routes if route.HasField("route")]
    if any(not route.route.HasField("retry_policy") for route in forwarding):
        return vhost
    counts = Counter(
        route.route.retry_policy.SerializeToString(deterministic=True) for route in forwarding
    )
    if not counts:
        return vhost
    common, count = counts.most_common(1)[0]
    if count < 2:
        return vhost
    vhost.retry_policy.MergeFromString(common)
    for route in forwarding:
        if route.route.retry_policy.SerializeToString(deterministic=True) == common:
            route.route.ClearField("retry_policy")
    return vhost


def retry_policy(retry: RetrySettings, reset: bool) -> route_components_pb2.RetryPolicy | None:
    if retry.attempts == 0:
        return None
    triggers = NEVER_REACHED + (",reset" if reset else "")
    if retry.codes:
        triggers += ",retriable-status-codes"
    policy = route_components_pb2.RetryPolicy(
        retry_on=triggers,
        num_retries=wrappers_pb2.UInt32Value(value=retry.attempts),
        retriable_status_codes=retry.codes,
        retry_host_predicate=[
            route_components_pb2.RetryPolicy.RetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate()),
            )
        ],
        host_selection_retry_max_attempts=HOST_SELECTION_ATTEMPTS,
    )
    if retry.backoff_ms is not None:
        base = max(retry.backoff_ms, 1)  # Envoy needs a positive interval
        policy.retry_back_off.base_interval.CopyFrom(duration(base))
        policy.retry_back_off.max_interval.CopyFrom(duration(max(base * 10, base)))
    return policy


def methods_matcher(methods: tuple[str, ...]) -> route_components_pb2.HeaderMatcher:
    return route_components_pb2.HeaderMatcher(
        name=":method",
        string_match=string_pb2.StringMatcher(
            safe_regex=regex_pb2.RegexMatcher(regex="|".join(re.escape(m) for m in methods))
        ),
    )
