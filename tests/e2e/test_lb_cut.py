"""Drain before unready: behind a load balancer that cuts established flows when a node's
health check fails, failing it at once fails the requests in flight; telling clients to go
first (`--health-check-failure-delay`) fails none. Scenario: bench/lab/lb_cut.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.lab.envoy_pod import WIRINGS, Wiring
from bench.lab.lb_cut import pod_behind_cutting_lb

pytestmark = pytest.mark.timeout(120)


async def test_a_balancer_that_cuts_flows_fails_requests_without_the_delay(workdir: Path) -> None:
    """The baseline: the balancer really cuts (else the next test would prove nothing).
    Whether a request is in flight on the node when its check fails is a race the clients
    usually lose (3 of 3 per drain in the benchmark) but once won in a fresh-clone run: the
    Connection: close of the failed health check can move them first. So up to three drains,
    and at least one must lose requests."""
    results = []
    for attempt in range(3):
        result = await pod_behind_cutting_lb(workdir / str(attempt), delay=0)
        results.append(result)
        if result.failed:
            break
    assert any(r.failed for r in results), results
    assert all(r.ok for r in results)


@pytest.mark.parametrize("wiring", WIRINGS)
async def test_with_the_delay_no_request_fails(wiring: Wiring, workdir: Path) -> None:
    result = await pod_behind_cutting_lb(workdir, delay=1.5, wiring=wiring)
    assert result.failed == 0, result.errors
    assert result.ok > 0
