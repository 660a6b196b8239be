"""The drain's own rules, without Envoy: budget, policy validation, outcomes."""

from __future__ import annotations

import time

import pytest

from shutdown_manager.drain import AdminBudget, Outcome
from shutdown_manager.policy import DrainPolicy


def test_admin_budget_allows_ten_calls_in_any_second() -> None:
    budget = AdminBudget(limit=10)
    for _ in range(10):
        assert budget.ready_at() <= time.monotonic()
        budget.spend()
    assert budget.ready_at() > time.monotonic(), "the eleventh call must wait"
    assert budget.ready_at() <= time.monotonic() + 1.0


@pytest.mark.parametrize(
    "bad",
    [
        {"drain_timeout": 0},
        {"min_drain_duration": 30, "drain_timeout": 10},
        {"exit_at_connections": -1},
        {"quiet_period": -1},
        {"poll_interval": 0.01},
    ],
)
def test_policy_rejects_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="--"):
        DrainPolicy(**bad)  # type: ignore[arg-type]


def test_default_policy_fits_the_default_grace_period() -> None:
    policy = DrainPolicy()
    grace = 30
    assert policy.min_drain_duration < policy.drain_timeout < grace


def test_exit_codes_are_the_hook_contract() -> None:
    assert {o: o.exit_code for o in Outcome} == {
        Outcome.DRAINED: 0,
        Outcome.QUIESCENT: 0,
        Outcome.TIMED_OUT: 3,
        Outcome.ENVOY_GONE: 4,
        Outcome.FAILED: 1,
    }
