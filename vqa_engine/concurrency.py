"""Adaptive concurrency: as many requests in flight as the endpoint tolerates, no more.

A fixed semaphore either wastes a fast endpoint or hammers a rate-limited one. The
`AdaptiveLimiter` follows AIMD (additive increase, multiplicative decrease), the scheme TCP
uses for the same problem: it starts at the configured limit, halves on a 429, and climbs
back by one slot after a run of successes, never above the configured limit.

A burst of 429s from requests that were all started under the old limit counts as one
signal (each slot remembers the *epoch* it was granted in), so 64 simultaneous 429s halve
the limit once, not 64 times. `hold()` pauses new grants while the endpoint asked us to
wait (`Retry-After`, `x-ratelimit-remaining-* = 0`).
"""

from __future__ import annotations

import asyncio
import collections
import time
from types import TracebackType


class AdaptiveLimiter:
    """`async with limiter:` waits for a slot; `.limit` and `.in_flight` feed progress displays."""

    def __init__(self, limit: int, *, recover_after: int = 10) -> None:
        if limit < 1:
            raise ValueError(f"concurrency limit must be at least 1, got {limit}")
        if recover_after < 1:
            raise ValueError(f"recover_after must be at least 1, got {recover_after}")
        self.max_limit = limit
        self.recover_after = recover_after
        self._limit = limit
        self._in_flight = 0
        self._epoch = 0
        self._successes = 0
        self._hold_until = 0.0
        self._waiters: collections.deque[asyncio.Future[int]] = collections.deque()
        self.decreases = 0
        self.increases = 0

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    @property
    def epoch(self) -> int:
        """Incremented on every decrease; a slot granted before it carries an older value."""
        return self._epoch

    @property
    def held_for(self) -> float:
        """Seconds until new slots are granted again (0 when not held)."""
        return max(0.0, self._hold_until - time.monotonic())

    async def acquire(self) -> int:
        """Wait for a slot; returns the epoch it was granted in."""
        while (delay := self._hold_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        if self._in_flight < self._limit and not self._waiters:
            self._in_flight += 1
            return self._epoch
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was granted just as we were cancelled
            else:
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
            raise

    def release(self) -> None:
        if self._in_flight <= 0:
            raise RuntimeError("AdaptiveLimiter.release() called more often than acquire()")
        self._in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._in_flight < self._limit:
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            self._in_flight += 1
            waiter.set_result(self._epoch)

    def record_success(self) -> None:
        """One request succeeded; after `recover_after` of them the limit rises by one."""
        if self._limit >= self.max_limit:
            self._successes = 0
            return
        self._successes += 1
        if self._successes >= self.recover_after:
            self._successes = 0
            self._limit += 1
            self.increases += 1
            self._wake()

    def record_rate_limited(self, epoch: int | None = None) -> bool:
        """A 429 arrived: halve the limit (not below 1). Returns True if the limit changed.

        Pass the epoch the failed request's slot was granted in; 429s from requests started
        before the latest decrease are the same congestion signal and are not counted again.
        """
        self._successes = 0
        if epoch is not None and epoch < self._epoch:
            return False
        self._epoch += 1
        new_limit = max(1, self._limit // 2)
        changed = new_limit != self._limit
        self._limit = new_limit
        if changed:
            self.decreases += 1
        return changed

    def hold(self, seconds: float) -> None:
        """Grant no new slot for `seconds` (requests already in flight continue)."""
        if seconds > 0:
            self._hold_until = max(self._hold_until, time.monotonic() + seconds)

    async def __aenter__(self) -> int:
        return await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return (f"AdaptiveLimiter(limit={self._limit}/{self.max_limit}, "
                f"in_flight={self._in_flight}, waiting={self.waiting})")
