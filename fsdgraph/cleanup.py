"""Stopping a coordinator cleanly, and removing what dead coordinators left.

A coordinator (the ``fsdgraph`` command, or any process running a ``Scheduler``) removes its
run's resources when the run ends, fails or is interrupted: Ctrl-C raises ``KeyboardInterrupt``,
which unwinds the run's ``finally`` blocks. :func:`terminate_on_signals` gives SIGTERM and SIGHUP
the same treatment: each raises :class:`Terminated` (a ``KeyboardInterrupt``, so asyncio lets it
through its tasks as it does Ctrl-C) in the main thread, and the command exits with
``128 + signal`` (143 for SIGTERM, 129 for SIGHUP; 130 for Ctrl-C). In a running event loop the
exception is raised from a callback of the loop, as asyncio does for Ctrl-C: ``asyncio.run`` then
cancels every task (their ``finally`` blocks run) and raises it.

A coordinator killed outright (SIGKILL, a crash) cleans nothing. Its local launcher notices and
stops the runs it served (:mod:`fsdgraph.backends.local.launcher`); what is still left, the next
local session sweeps, or :func:`cleanup` (``fsdgraph cleanup``):

* locally, every ``fsdgraph-*`` directory (run or launcher directory) whose owner record names a
  process that is gone, with the processes recorded in it, and every process of the local
  backend (a launcher and what it forked) whose coordinator is gone
  (:mod:`fsdgraph.backends.local.owner`);
* on AWS (``backend="aws"``), the queues and topics named ``<deployment>-<run id>-*`` and the
  objects under ``<prefix>runs/<run id>/`` of every run older than ``older_than_s``
  (:func:`fsdgraph.backends.aws.deploy.remove_run_leftovers`).

>>> parse_duration("90m"), parse_duration("1h"), parse_duration("2d"), parse_duration("45")
(5400.0, 3600.0, 172800.0, 45.0)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from fsdgraph.errors import InputError

#: The signals :func:`terminate_on_signals` turns into :class:`Terminated`.
SIGNALS = (signal.SIGTERM, signal.SIGHUP)
#: ``--older-than``'s units, in seconds.
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM or SIGHUP (:func:`terminate_on_signals`). A
    ``KeyboardInterrupt``, as Ctrl-C's: every ``finally`` block and ``async with`` exit runs,
    and asyncio lets it out of its tasks instead of keeping it as a task's result."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """What a process that ends on it exits with: 128 + the signal, as a shell reports."""
        return 128 + self.signum


@contextlib.contextmanager
def terminate_on_signals(signals: Sequence[int] = SIGNALS) -> Iterator[None]:
    """While inside, the first of ``signals`` to arrive raises :class:`Terminated` in the main
    thread (later ones are ignored, so that the clean-up it starts is not cut short); the
    previous handlers come back on exit. Outside the main thread, nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if fired:
            return
        fired.append(signum)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise Terminated(signum) from None
        # In an event loop: raised from a callback of its own, not inside whichever task runs
        # now (which would keep it as its result). It stops the loop, then ``asyncio.run``
        # cancels every task, so that their finally blocks run, and raises it.
        loop.call_soon_threadsafe(_raise, signum)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def _raise(signum: int) -> None:
    raise Terminated(signum)


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number, optionally followed by s, m, h or d (``90m``, ``1h``)."""
    value = text.strip().lower()
    unit = UNITS.get(value[-1:])
    number = value[:-1] if unit is not None else value
    try:
        seconds = float(number) * (unit or 1.0)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise InputError(f"--older-than must be a duration such as 30m, 1h or 2d (s, m, h, d), "
                         f"got {text!r}")
    return seconds


def local_roots(config_file: Path | None = None) -> list[str]:
    """Where the local backend puts run and launcher directories: the configured ``root``
    (``[local]`` table, ``FSDGRAPH_LOCAL_ROOT``), the default (/dev/shm, else the temp dir) and
    the temp dir."""
    from fsdgraph.backends.local import LocalBackend, _default_parent

    roots = [LocalBackend.configure(config_file).root, _default_parent(), tempfile.gettempdir()]
    found: list[str] = []
    for root in roots:
        if root is not None and os.path.realpath(root) not in map(os.path.realpath, found):
            found.append(root)
    return found


def cleanup_local(roots: Sequence[str], *, dry_run: bool = False) -> list[dict[str, Any]]:
    """Sweep ``roots`` and kill the orphaned processes of the local backend (see the module
    docstring); what was (``dry_run``: would be) removed, as JSON-able records."""
    from fsdgraph.backends.local.owner import kill, orphans, sweep

    removed: list[dict[str, Any]] = []
    killed: set[int] = set()
    for root in roots:
        for swept in sweep(root, dry_run=dry_run):
            removed.append({"backend": "local", **swept.to_dict()})
            killed.update(swept.processes)
    for pid in orphans():
        if pid in killed:
            continue
        if dry_run or kill(pid):
            removed.append({"backend": "local", "kind": "process", "pid": pid})
    return removed


def cleanup_aws(config_file: Path | None, *, older_than_s: float, dry_run: bool = False,
                say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """What the AWS backend's dead runs left, older than ``older_than_s``: removed (or, dry,
    listed), as JSON-able records."""
    try:
        from fsdgraph.backends.aws import load_aws_settings
        from fsdgraph.backends.aws.deploy import remove_run_leftovers
    except ImportError as exc:
        raise InputError(f"cleanup --backend aws needs the aws extra: pip install "
                         f"'fsdgraph[aws]' ({exc})") from exc
    settings = load_aws_settings(config_file)
    return [{"backend": "aws", **r.__dict__}
            for r in remove_run_leftovers(settings, older_than_s=older_than_s, dry_run=dry_run,
                                          say=say)]


def cleanup(backend: str = "local", *, config_file: Path | None = None,
            older_than_s: float = 3600.0, dry_run: bool = False,
            say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """``fsdgraph cleanup``: the local leftovers always, and with ``backend="aws"`` also the
    AWS ones (see the module docstring)."""
    if backend not in ("local", "aws"):
        raise InputError(f"cleanup: --backend must be local or aws, got {backend!r}")
    removed = cleanup_local(local_roots(config_file), dry_run=dry_run)
    if backend == "aws":
        removed += cleanup_aws(config_file, older_than_s=older_than_s, dry_run=dry_run, say=say)
    return removed


__all__ = ["SIGNALS", "Terminated", "cleanup", "cleanup_aws", "cleanup_local", "local_roots",
           "parse_duration", "terminate_on_signals"]
