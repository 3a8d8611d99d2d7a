"""AdaptiveLimiter: bounded in-flight work, AIMD limit changes, holds, cancellation."""

from __future__ import annotations

import asyncio
import time

import pytest

from vqa_engine.concurrency import AdaptiveLimiter


async def test_never_more_than_the_limit_in_flight():
    limiter = AdaptiveLimiter(3)
    peak = 0

    async def work() -> None:
        nonlocal peak
        async with limiter:
            peak = max(peak, limiter.in_flight)
            await asyncio.sleep(0.005)

    await asyncio.gather(*(work() for _ in range(30)))
    assert peak == 3 and limiter.in_flight == 0


async def test_waiters_are_served_in_arrival_order():
    limiter = AdaptiveLimiter(1)
    order: list[int] = []

    async def work(n: int) -> None:
        async with limiter:
            order.append(n)
            await asyncio.sleep(0)

    await asyncio.gather(*(work(n) for n in range(10)))
    assert order == list(range(10))


def test_rate_limited_halves_the_limit_but_not_below_one():
    limiter = AdaptiveLimiter(10)
    seen = []
    for _ in range(6):
        limiter.record_rate_limited()
        seen.append(limiter.limit)
    assert seen == [5, 2, 1, 1, 1, 1]


def test_successes_raise_the_limit_by_one_per_run_never_above_the_maximum():
    limiter = AdaptiveLimiter(4, recover_after=3)
    limiter.record_rate_limited()
    assert limiter.limit == 2
    for _ in range(2):
        limiter.record_success()
    assert limiter.limit == 2
    limiter.record_success()
    assert limiter.limit == 3
    for _ in range(30):
        limiter.record_success()
    assert limiter.limit == 4 == limiter.max_limit


def test_a_429_resets_the_success_run():
    limiter = AdaptiveLimiter(8, recover_after=3)
    limiter.record_rate_limited()
    limiter.record_success()
    limiter.record_success()
    limiter.record_rate_limited()
    limiter.record_success()
    assert limiter.limit == 2


async def test_429s_from_slots_granted_before_a_decrease_count_once():
    limiter = AdaptiveLimiter(8)
    epochs = [await limiter.acquire() for _ in range(8)]
    changes = [limiter.record_rate_limited(epoch) for epoch in epochs]
    assert changes == [True] + [False] * 7 and limiter.limit == 4
    for _ in range(8):
        limiter.release()
    fresh = await limiter.acquire()
    assert limiter.record_rate_limited(fresh) and limiter.limit == 2
    limiter.release()


async def test_lowering_the_limit_holds_new_work_until_in_flight_drops():
    limiter = AdaptiveLimiter(4)
    for _ in range(4):
        await limiter.acquire()
    limiter.record_rate_limited()  # limit 2 while 4 are in flight
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.01)
    limiter.release()
    limiter.release()
    await asyncio.sleep(0.01)
    assert not waiter.done()
    limiter.release()
    await asyncio.wait_for(waiter, 1)
    assert limiter.in_flight == 2


async def test_raising_the_limit_wakes_waiters():
    limiter = AdaptiveLimiter(2, recover_after=1)
    limiter.record_rate_limited()
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    limiter.record_success()
    await asyncio.wait_for(waiter, 1)
    assert limiter.in_flight == 2


async def test_cancelled_waiters_leave_no_slot_behind():
    limiter = AdaptiveLimiter(1)
    await limiter.acquire()
    waiters = [asyncio.create_task(limiter.acquire()) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert limiter.waiting == 3
    waiters[1].cancel()
    limiter.release()  # granted to waiters[0]
    waiters[0].cancel()  # cancelled after being granted: gives the slot on
    await asyncio.wait_for(waiters[2], 1)
    assert waiters[0].cancelled() and waiters[1].cancelled()
    assert limiter.in_flight == 1
    limiter.release()
    assert limiter.in_flight == 0


async def test_hold_delays_new_slots_for_the_given_time():
    limiter = AdaptiveLimiter(4)
    limiter.hold(0.2)
    assert limiter.held_for > 0.1
    started = time.monotonic()
    async with limiter:
        waited = time.monotonic() - started
    assert waited >= 0.18


def test_a_limit_below_one_is_refused():
    with pytest.raises(ValueError):
        AdaptiveLimiter(0)
    with pytest.raises(RuntimeError):
        AdaptiveLimiter(1).release()
