"""Local "functions": every invocation is a new OS process running the worker entry point.

``invoke`` returns once the process is started, as Lambda's ``InvocationType=Event`` returns once
the event is queued. The event travels on the child's stdin as JSON (never pickled), bounded by
the same payload limit as an asynchronous Lambda invoke. Each process records its pid under
``<run dir>/pids`` so the session can stop stragglers of a failed run, and writes its stderr to
``<run dir>/logs/worker-<w>.log``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fsdgraph.backend import Functions
from fsdgraph.errors import MessageTooLarge, TransportError


class ProcessFunctions(Functions):
    """Start ``python -m fsdgraph.backends.local.function`` per invocation."""

    def __init__(self, run_dir: str | Path, max_payload_bytes: int) -> None:
        self.run_dir = Path(run_dir)
        self.max_payload_bytes = max_payload_bytes
        self.started: list[subprocess.Popen[bytes]] = []

    async def invoke(self, event: Mapping[str, Any]) -> None:
        payload = json.dumps(event).encode()
        if len(payload) > self.max_payload_bytes:
            raise MessageTooLarge(f"invoke payload of {len(payload)} bytes exceeds the limit of "
                                  f"{self.max_payload_bytes} bytes")
        logs = self.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        try:
            with open(logs / f"worker-{event.get('worker', 'x')}.log", "ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "fsdgraph.backends.local.function"],
                    stdin=subprocess.PIPE, stdout=log, stderr=log, close_fds=True)
        except OSError as exc:
            raise TransportError(f"cannot start a local worker process: {exc}") from exc
        assert proc.stdin is not None
        proc.stdin.write(payload)
        proc.stdin.close()
        self.started.append(proc)

    def reap(self) -> None:
        """Collect exited children (no zombies in long-lived processes such as the scheduler)."""
        self.started = [p for p in self.started if p.poll() is None]


def record_pid(run_dir: str | Path, worker: int) -> None:
    pids = Path(run_dir) / "pids"
    pids.mkdir(parents=True, exist_ok=True)
    (pids / str(worker)).write_text(str(os.getpid()))


def stop_workers(run_dir: str | Path) -> int:
    """SIGKILL every worker of the run still alive; return how many were."""
    import signal

    stopped = 0
    pids = Path(run_dir) / "pids"
    if not pids.is_dir():
        return 0
    for f in pids.iterdir():
        try:
            pid = int(f.read_text())
            # A pid file can outlive its process (SIGKILL) and the pid be reused: check first.
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"fsdgraph.backends.local.function" in cmdline:
                os.kill(pid, signal.SIGKILL)
                stopped += 1
        except (OSError, ValueError):
            pass
    return stopped


def main() -> int:
    """``python -m fsdgraph.backends.local.function``: one invocation, event on stdin."""
    from fsdgraph.worker import handler

    event = json.loads(sys.stdin.buffer.read())
    run_dir, worker = event["backend_config"]["root"], int(event["worker"])
    record_pid(run_dir, worker)
    try:
        handler(event)
    except Exception:  # noqa: BLE001 - already reported to the scheduler by the worker
        import traceback

        traceback.print_exc()
        return 1
    finally:
        (Path(run_dir) / "pids" / str(worker)).unlink(missing_ok=True)
    return 0
