"""Many requests at once, bounded: how a run creates and deletes its resources.

Setting up a run of P workers takes O(P) requests (a queue and a subscription per worker); one
after the other that is minutes at a thousand workers, all at once it is throttled. :func:`each`
keeps at most ``limit`` calls in flight, retries each retryable failure with backoff until
``deadline_s`` (:func:`fsdgraph.retry.retry`), and on the first failure that stays a failure
cancels the calls still running and waits for them before raising it, so that cleanup never
races a create that is still going.

>>> import asyncio
>>> async def square(x):
...     await asyncio.sleep(0)
...     return x * x
>>> asyncio.run(each([lambda x=x: square(x) for x in range(5)], limit=2, deadline_s=1.0))
[0, 1, 4, 9, 16]
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from fsdgraph.retry import retry

T = TypeVar("T")

#: Requests in flight while a run's resources are created or deleted.
SETUP_CONCURRENCY = 32
#: How long one throttled setup request is retried.
SETUP_DEADLINE_S = 60.0


async def each(calls: Sequence[Callable[[], Awaitable[T]]], *, limit: int = SETUP_CONCURRENCY,
               deadline_s: float = SETUP_DEADLINE_S) -> list[T]:
    """``await call()`` for every call, at most ``limit`` at a time, each retried; the results
    in order. See the module docstring."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await retry(call, deadline_s=deadline_s)

    tasks = [asyncio.ensure_future(one(call)) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
