"""Waking long-polls the moment something they wait for happens.

A waiter registers before it looks at the store and sleeps on its future
afterwards, so a ring that lands while it is looking is never lost.
"""

import asyncio
from collections import deque


class Doorbell:
    """Wakes waiting coroutines, a given number at a time or all at once."""

    def __init__(self) -> None:
        self._waiters: deque[asyncio.Future[None]] = deque()

    def register(self) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        if len(self._waiters) > 256:
            # Waiters that timed out leave done futures behind; drop them.
            self._waiters = deque(f for f in self._waiters if not f.done())
        return future

    def ring(self, count: int | None = None) -> None:
        """Wake `count` waiters (every waiter when None), oldest first."""
        woken = 0
        while self._waiters and (count is None or woken < count):
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)
                woken += 1

    @staticmethod
    async def wait(future: asyncio.Future[None], timeout_s: float) -> bool:
        """Sleep until rung or `timeout_s` passes; True when rung."""
        if timeout_s <= 0:
            return future.done()
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout_s)
            return True
        except TimeoutError:
            future.cancel()
            return False
        except asyncio.CancelledError:
            # The waiter is gone (its caller hung up); a future left pending
            # would take the next ring meant for a waiter still there.
            future.cancel()
            raise

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())
