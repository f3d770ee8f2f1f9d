"""One retry rule for every request: exponential backoff with jitter, bounded by a deadline.

A transport signals a failure worth retrying (throttling, a passing fault) with
:class:`~fsdgraph.errors.TransportError` whose ``retryable`` is true; anything else is raised at
once. Retrying stops at the deadline with the last error, never silently.

>>> import asyncio
>>> from fsdgraph.errors import TransportError
>>> calls = []
>>> async def flaky():
...     calls.append(1)
...     if len(calls) < 3:
...         raise TransportError("throttled", retryable=True)
...     return "ok"
>>> asyncio.run(retry(flaky, deadline_s=5.0, first_delay_s=0.001))
'ok'
>>> len(calls)
3
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fsdgraph.errors import TransportError

T = TypeVar("T")

#: First wait after a retryable failure, and the most any one wait grows to (seconds).
FIRST_DELAY_S = 0.01
MAX_DELAY_S = 1.0


class Backoff:
    """Waits that double from ``first_delay_s`` up to ``max_delay_s``, each with full jitter in
    [0.5, 1.5) of its nominal value, until ``deadline_s`` from creation has passed (no wait
    ends after it).

    For loops that retry part of a result rather than an exception (a batch call's failed
    entries)::

        backoff = Backoff(deadline_s)
        while (failed := await attempt()) and not backoff.expired:
            await backoff.wait()
    """

    def __init__(self, deadline_s: float, first_delay_s: float = FIRST_DELAY_S,
                 max_delay_s: float = MAX_DELAY_S) -> None:
        self.deadline = time.monotonic() + deadline_s
        self.delay = first_delay_s
        self.max_delay = max_delay_s

    @property
    def expired(self) -> bool:
        """True once waiting once more would pass the deadline."""
        return time.monotonic() + self.delay > self.deadline

    async def wait(self) -> None:
        left = self.deadline - time.monotonic()
        await asyncio.sleep(max(0.0, min(self.delay * (0.5 + random.random()), left)))
        self.delay = min(self.delay * 2, self.max_delay)


async def retry(call: Callable[[], Awaitable[T]], *, deadline_s: float,
                first_delay_s: float = FIRST_DELAY_S, max_delay_s: float = MAX_DELAY_S) -> T:
    """``await call()`` until it does not raise a retryable TransportError or the deadline
    passes (then the last error is raised)."""
    backoff = Backoff(deadline_s, first_delay_s, max_delay_s)
    while True:
        try:
            return await call()
        except TransportError as exc:
            if not exc.retryable or backoff.expired:
                raise
        await backoff.wait()
