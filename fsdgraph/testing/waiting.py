"""Waiting in tests on an event, never on the clock: a loaded machine is slow, not wrong.

>>> wait_until(lambda: 3, "a number")
3
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(condition: Callable[[], Any], what: str,
               alive: Callable[[], bool] | None = None, poll_s: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something true, and return that. Fails only when
    ``alive`` (what would make the condition true: a server, a process) says it is gone."""
    while not (value := condition()):
        if alive is not None and not alive():
            raise AssertionError(f"gave up waiting: {what} (what it waits on has stopped)")
        time.sleep(poll_s)
    return value
