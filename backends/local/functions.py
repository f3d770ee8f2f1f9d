"""Local "functions": every invocation is a new OS process running the worker entry point.

``invoke`` returns once the process exists, as Lambda's ``InvocationType=Event`` returns once the
event is queued. With a warm launcher (:mod:`fsdgraph.backends.local.launcher`, the default) the
process is forked from a parent that has already imported the runtime; without one, a cold
``python -m fsdgraph.backends.local run`` is started. Either way the event travels as compact
JSON (never pickled, :func:`fsdgraph.transport.invoke_payload`); the callers have checked it
against the same payload limit as an asynchronous Lambda invoke
(:func:`fsdgraph.transport.check_invoke_payload`).
Each worker records its pid under ``<run dir>/pids`` so the session can stop stragglers of a failed
run, and writes its output to ``<run dir>/logs/worker-<w>.log``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fsdgraph.backend import Functions
from fsdgraph.errors import TransportError
from fsdgraph.retry import Backoff
from fsdgraph.transport import invoke_payload

_MODULE = "fsdgraph.backends.local"


#: The launcher's socket is looked for at these intervals (doubling) while it starts.
_STARTUP_POLL_S = (0.005, 0.05)


class ProcessFunctions(Functions):
    """Invoke workers as local processes (see the module docstring). The event's size is
    checked by the caller against ``Limits.max_invoke_payload_bytes``, once, in the core."""

    def __init__(self, *, launcher: str | None = None, startup_timeout_s: float = 60.0) -> None:
        self.launcher = launcher
        self.startup_timeout_s = startup_timeout_s
        self._cold: list[subprocess.Popen[bytes]] = []
        #: Set where the launcher process is known (the session's side): a launcher that died
        #: starting up fails the invocation at once, with its own error, not after a timeout.
        self.pool: WarmPool | None = None

    async def invoke(self, event: Mapping[str, Any]) -> None:
        payload = invoke_payload(event)
        if self.launcher:
            await self._invoke_warm(Path(self.launcher), payload)
        else:
            self._invoke_cold(payload)

    async def _invoke_warm(self, path: Path, payload: bytes) -> None:
        backoff = Backoff(self.startup_timeout_s, *_STARTUP_POLL_S)
        while not path.exists():
            if self.pool is not None and not self.pool.alive:
                raise TransportError(f"local launcher exited while starting: {self.pool.log()}")
            if backoff.expired:
                raise TransportError(f"local launcher did not start within "
                                     f"{self.startup_timeout_s:g} s (no {path})")
            await backoff.wait()
        try:
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(payload)
            writer.write_eof()
            answer = await reader.read()
            writer.close()
            await writer.wait_closed()
        except OSError as exc:
            raise TransportError(f"local launcher at {path} refused the invocation: {exc}") from exc
        if answer != b"ok":
            raise TransportError(f"local launcher rejected the invocation: {answer!r}")

    def _invoke_cold(self, payload: bytes) -> None:
        try:
            proc = subprocess.Popen([sys.executable, "-m", _MODULE, "run"],
                                    stdin=subprocess.PIPE, close_fds=True, env=_worker_env())
        except OSError as exc:
            raise TransportError(f"cannot start a local worker process: {exc}") from exc
        assert proc.stdin is not None
        proc.stdin.write(payload)
        proc.stdin.close()
        self._cold.append(proc)

    def reap(self) -> None:
        """Collect exited cold children (no zombies in a long-lived scheduler process)."""
        self._cold = [p for p in self._cold if p.poll() is None]


class WarmPool:
    """A running launcher (:mod:`fsdgraph.backends.local.launcher`) and its socket."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="fsdgraph-launcher-")
        self.socket = str(Path(self.directory) / "launcher.sock")
        self._log = Path(self.directory) / "launcher.log"
        with open(self._log, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", _MODULE, "serve", self.socket],
                                            stdin=subprocess.DEVNULL, stderr=log,
                                            close_fds=True, env=_worker_env())
        self._finalizer = weakref.finalize(self, _stop_pool, self.process, self.directory)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        """The end of what the launcher wrote to stderr (why it died)."""
        try:
            lines = self._log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-3:]) or "(no output)"

    def close(self) -> None:
        self._finalizer()


def _stop_pool(process: subprocess.Popen[bytes], directory: str) -> None:
    process.kill()
    process.wait()
    import shutil

    shutil.rmtree(directory, ignore_errors=True)


def _worker_env() -> dict[str, str]:
    """One thread per worker process: workers are the parallelism, BLAS pools would fight."""
    return {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def stop_workers(run_dir: str | Path) -> int:
    """SIGKILL every worker of the run still alive; return how many were."""
    stopped = 0
    pids = Path(run_dir) / "pids"
    if not pids.is_dir():
        return 0
    for f in pids.iterdir():
        try:
            pid = int(f.read_text())
            # A pid file can outlive its process (SIGKILL) and the pid be reused: check first.
            if _is_worker(pid):
                os.kill(pid, signal.SIGKILL)
                stopped += 1
        except (OSError, ValueError):
            pass
    return stopped


def _is_worker(pid: int) -> bool:
    try:
        return _MODULE.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
