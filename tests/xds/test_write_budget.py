"""Large responses in flight are bounded: past the budget a stream waits for others' answers,
and a share held too long is given back (a slow reader cannot hold the others)."""

from __future__ import annotations

import asyncio

import pytest

from xds_server.xds.server import LARGE_WRITE, WriteBudget

pytestmark = pytest.mark.timeout(10)


async def test_past_the_budget_a_write_waits_until_a_share_is_given_back() -> None:
    budget = WriteBudget(capacity=3 * LARGE_WRITE)
    first = await budget.acquire(2 * LARGE_WRITE)
    small = await budget.acquire(100)  # small responses never wait nor count
    assert small.size == 0
    waiting = asyncio.create_task(budget.acquire(2 * LARGE_WRITE))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    first.release()
    second = await asyncio.wait_for(waiting, 2)
    assert budget.used == 2 * LARGE_WRITE
    second.release()
    second.release()  # given back once, whoever calls it again (the timer, the answer)
    assert budget.used == 0


async def test_a_response_larger_than_the_budget_waits_for_all_of_it() -> None:
    budget = WriteBudget(capacity=2 * LARGE_WRITE)
    held = await budget.acquire(LARGE_WRITE)
    huge = asyncio.create_task(budget.acquire(10 * LARGE_WRITE))
    await asyncio.sleep(0.05)
    assert not huge.done()
    held.release()
    share = await asyncio.wait_for(huge, 2)
    assert share.size == budget.capacity


async def test_a_cancelled_waiter_leaves_nothing_behind() -> None:
    budget = WriteBudget(capacity=LARGE_WRITE)
    held = await budget.acquire(LARGE_WRITE)
    waiter = asyncio.create_task(budget.acquire(LARGE_WRITE))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    held.release()
    assert budget.used == 0
    assert (await asyncio.wait_for(budget.acquire(LARGE_WRITE), 2)).size == LARGE_WRITE
