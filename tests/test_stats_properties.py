"""Stats parsing and listener exclusion, as properties over generated stats."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shutdown_manager.admin import ListenerAddress
from shutdown_manager.stats import (
    ListenerFilter,
    StatsError,
    count_connections,
    listener_stat_name,
    parse_stats,
)

names = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True).filter(lambda n: n != "admin")
addresses = st.builds(
    listener_stat_name,
    st.sampled_from(["0.0.0.0", "127.0.0.1", "::", "::1", "10.1.2.3"]),
    st.integers(1, 65535),
)
listener_names = st.one_of(names, addresses)
counts = st.integers(0, 10_000)


def envoy_stats(listeners: dict[str, int], workers: int) -> dict[str, int]:
    """Gauges as Envoy publishes them: each listener, its per-worker copies, the admin."""
    values = {
        "listener.admin.downstream_cx_active": 1,
        "listener.admin.main_thread.downstream_cx_active": 1,
    }
    for name, value in listeners.items():
        values[f"listener.{name}.downstream_cx_active"] = value
        for worker in range(workers):
            values[f"listener.{name}.worker_{worker}.downstream_cx_active"] = value
    return values


@given(st.dictionaries(listener_names, counts, max_size=8), st.integers(0, 4))
def test_total_is_the_sum_over_listeners_never_workers_or_admin(
    listeners: dict[str, int], workers: int
) -> None:
    count = count_connections(envoy_stats(listeners, workers), ListenerFilter())
    assert count.total == sum(listeners.values())
    assert set(count.listeners) == set(listeners)


@given(st.dictionaries(listener_names, counts, min_size=1, max_size=8), st.data())
def test_ignored_listeners_are_excluded_exactly(
    listeners: dict[str, int], data: st.DataObject
) -> None:
    ignored = data.draw(st.sets(st.sampled_from(sorted(listeners))))
    count = count_connections(envoy_stats(listeners, 2), ListenerFilter(tuple(ignored)))
    assert set(count.listeners) == set(listeners) - ignored
    assert count.total == sum(v for k, v in listeners.items() if k not in ignored)


@given(names, names)
def test_a_pattern_never_matches_by_substring(name: str, other: str) -> None:
    longer = f"{name}{other}"
    count = count_connections(envoy_stats({longer: 3, name: 2}, 1), ListenerFilter((name,)))
    assert count.listeners == {longer: 3}


@given(st.lists(names, min_size=1, max_size=5, unique=True))
def test_globs_match_whole_names(prefixes: list[str]) -> None:
    listeners = {f"{p}_http": 1 for p in prefixes} | {"probe": 5}
    count = count_connections(envoy_stats(listeners, 1), ListenerFilter(("*_http",)))
    assert count.listeners == {"probe": 5}


@given(st.sampled_from(["0.0.0.0", "127.0.0.1", "::", "::1"]), st.integers(1, 65535), counts)
def test_configured_names_resolve_to_address_stat_names(host: str, port: int, value: int) -> None:
    stat_name = listener_stat_name(host, port)
    ignore = ListenerFilter.resolve(("probe",), [ListenerAddress("probe", host, port)])
    count = count_connections(envoy_stats({stat_name: value, "ingress": 1}, 2), ignore)
    assert count.listeners == {"ingress": 1}


@given(counts, counts, counts, counts)
def test_http_gauges_sum_over_managers_but_not_admin(a: int, b: int, rq: int, total: int) -> None:
    values = {
        "http.ingress.downstream_cx_active": a,
        "http.tls.downstream_cx_active": b,
        "http.admin.downstream_cx_active": 7,
        "http.ingress.downstream_rq_active": rq,
        "http.admin.downstream_rq_active": 1,
        "http.ingress.downstream_rq_total": total,
        "http.ingress.user_agent.ios.downstream_rq_total": 99,
    }
    count = count_connections(values, ListenerFilter())
    assert count.http_connections == a + b
    assert count.requests_active == rq
    assert count.requests_total == total


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(json_values)
def test_parse_stats_accepts_or_raises_stats_error_never_anything_else(body: Any) -> None:
    try:
        parsed = parse_stats(body)
    except StatsError:
        return
    assert all(isinstance(v, int) and v >= 0 for v in parsed.values())


@given(st.lists(st.tuples(listener_names, counts), max_size=10))
def test_parse_stats_round_trips_envoy_json(entries: list[tuple[str, int]]) -> None:
    body = {
        "stats": [{"name": f"listener.{n}.downstream_cx_active", "value": v} for n, v in entries]
    }
    assert parse_stats(body) == {f"listener.{n}.downstream_cx_active": v for n, v in entries}


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [("127.0.0.1", 8080, "127.0.0.1_8080"), ("::1", 18081, "[__1]_18081"), ("::", 80, "[__]_80")],
)
def test_listener_stat_names_match_envoy_1_40(host: str, port: int, expected: str) -> None:
    assert listener_stat_name(host, port) == expected
