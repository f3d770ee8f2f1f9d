"""The local function service: forks warm worker processes on request.

Starting a Python process that imports numpy and scipy takes a few hundred milliseconds, much
like a Lambda cold start. A cloud provider hides most of that behind warm sandboxes; locally, a
launcher process imports the worker runtime once and then ``fork``s one child per invocation, so
an invocation costs about a millisecond. Every worker is still its own OS process, and inner
workers still invoke their children through this service (the hierarchical tree is real).

The launcher outlives single runs, as warm sandboxes do: a :class:`WarmPool` (one per
``LocalBackend``) starts it on first use and stops it when the backend is closed or garbage
collected; every run's events say where their run directory is.

Protocol on its UNIX socket: the client sends the JSON event and shuts down its write side; the
launcher answers ``ok`` once the child is forked. Nothing received is ever evaluated or unpickled.

``python -m fsdgraph.backends.local serve SOCKET`` runs the service; ``... run`` runs one cold
invocation whose event is on stdin.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import Any


def run_invocation(event: dict[str, Any]) -> int:
    """Run one worker in this process: pid file, log file, handler; return the exit code."""
    from fsdgraph.worker import handler

    run_dir = Path(event["backend_config"]["root"])
    worker = int(event["worker"])
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = os.open(logs / f"worker-{worker}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    pids = run_dir / "pids"
    pids.mkdir(parents=True, exist_ok=True)
    pid_file = pids / str(worker)
    pid_file.write_text(str(os.getpid()))
    try:
        handler(event)
        return 0
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        pid_file.unlink(missing_ok=True)


def serve(path: Path) -> None:
    """Accept invocations on the UNIX socket ``path`` until killed."""
    import fsdgraph.worker  # noqa: F401 - the point: import once, fork many

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp))
    server.listen(128)
    os.replace(tmp, path)  # clients see the socket only once it accepts
    while True:
        conn, _ = server.accept()
        with conn:
            data = b"".join(iter(functools.partial(conn.recv, 65536), b""))
            try:
                event = json.loads(data)
            except ValueError:
                conn.sendall(b"bad event")
                continue
            if os.fork() == 0:  # the child becomes the worker
                server.close()
                conn.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.setpgid(0, 0)
                code = run_invocation(event)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
            conn.sendall(b"ok")


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"] and len(argv) == 2:
        serve(Path(argv[1]))
        return 0
    if argv == ["run"]:
        return run_invocation(json.loads(sys.stdin.buffer.read()))
    print("usage: python -m fsdgraph.backends.local (serve SOCKET | run)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
