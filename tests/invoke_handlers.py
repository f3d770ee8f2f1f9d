"""Lambda handlers for tests/test_invoke_server.py.

The invoke server runs them in its subprocesses, which import this module because the test
functions put this folder on ``PYTHONPATH`` in their environment variables. Results are written to
files named in the event (replaced whole, so a reader never sees half a file).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def _write(path: str, data: Any) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def report(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Write what the handler sees (the event, the environment variables named in
    ``event["env"]``, the context) to ``event["path"]``, and return it."""
    seen = {
        "event": event,
        "env": {name: os.environ.get(name) for name in event.get("env", [])},
        "context": {
            "function_name": context.function_name,
            "memory_limit_in_mb": context.memory_limit_in_mb,
            "aws_request_id": context.aws_request_id,
            "invoked_function_arn": context.invoked_function_arn,
            "remaining_ms": context.get_remaining_time_in_millis(),
        },
    }
    _write(event["path"], seen)
    return seen


def echo(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Return the event, after printing a line (which must land in the log, not the result)."""
    print(f"echo handler called by {context.function_name}")
    return {"echo": event, "function_name": context.function_name}


def fail(event: dict[str, Any], context: Any) -> None:
    """Raise, with the event's ``x`` in the message."""
    raise ValueError(f"bad input: {event.get('x')}")


def sleep_then_write(event: dict[str, Any], context: Any) -> None:
    """Write ``event["started"]`` (if given) at once, sleep ``event["sleep_s"]``, then write
    ``event["path"]``."""
    if "started" in event:
        _write(event["started"], time.time())
    time.sleep(float(event["sleep_s"]))
    _write(event["path"], time.time())
