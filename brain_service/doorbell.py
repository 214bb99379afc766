"""Waking long-polls the moment something they wait for happens.

A waiter registers before it looks at the store and sleeps on its future
afterwards, so a ring that lands while it is looking is never lost. A waiter
about to sleep may also leave an order: a caller that is about to make work
can then `take` the waiter and do the work for it (a submit claims for a
long-poll in its own transaction), settling the waiter's future with the
result instead of ringing it.
"""

import asyncio
from collections import deque
from typing import Any, Generic, TypeVar

Order = TypeVar("Order")


class Doorbell(Generic[Order]):
    """Wakes waiting coroutines, a given number at a time or all at once."""

    def __init__(self) -> None:
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._orders: dict[asyncio.Future[Any], Order] = {}

    def register(self) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        if len(self._waiters) > 256:
            # Waiters that timed out leave done futures behind; drop them.
            self._waiters = deque(f for f in self._waiters if not f.done())
            self._orders = {f: o for f, o in self._orders.items() if not f.done()}
        return future

    def offer(self, future: asyncio.Future[Any], order: Order) -> None:
        """Let `take` hand the registered waiter's `future` to a caller that
        will settle it with what `order` asks for."""
        if not future.done():
            self._orders[future] = order

    def take(self) -> tuple[asyncio.Future[Any], Order] | None:
        """The oldest waiter that left an order, off the list and not rung.

        The caller must settle its future: with a result, or with None,
        which to the waiter is the same as a ring.
        """
        for future in self._waiters:
            if not future.done() and future in self._orders:
                self._waiters.remove(future)
                return future, self._orders.pop(future)
        return None

    def ring(self, count: int | None = None) -> None:
        """Wake `count` waiters (every waiter when None), oldest first."""
        woken = 0
        while self._waiters and (count is None or woken < count):
            future = self._waiters.popleft()
            self._orders.pop(future, None)
            if not future.done():
                future.set_result(None)
                woken += 1

    @staticmethod
    async def wait(future: asyncio.Future[Any], timeout_s: float) -> bool:
        """Sleep until rung or `timeout_s` passes; True when rung.

        The future is settled on return, rung or cancelled; a result that
        lands as the time runs out still counts as rung.
        """
        if timeout_s <= 0:
            return not future.cancel()
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
            # cancellation that lands as the future is settled, and a long-poll
            # would then answer a caller that has gone.
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(future)
            return True
        except TimeoutError:
            return not future.cancel()
        except asyncio.CancelledError:
            # The waiter is gone (its caller hung up); a future left pending
            # would take the next ring meant for a waiter still there.
            future.cancel()
            raise

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())
