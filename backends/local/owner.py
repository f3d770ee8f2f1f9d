"""Who owns a local directory, and sweeping what dead owners left.

Every directory the local backend makes (a run directory ``fsdgraph-<run id>-XXXXXXXX``, a warm
launcher's socket directory ``fsdgraph-launcher-XXXXXXXX``) records in a file named ``owner``
the process it belongs to, the coordinator: its pid, when it started (so that a reused pid is
not taken for it) and the machine. A coordinator that ends normally removes its directories; one
that is killed (SIGKILL, a crash, the machine's OOM killer) cannot, and its launcher (which
notices its death) removes what it knows of. What is left is removed by :func:`sweep`, which
every new session, every new launcher and ``fsdgraph cleanup`` run: a directory goes only when
its owner record names a process that is gone. A directory without a record (another program's,
or one being created this instant) and a directory of a live owner are never touched.

>>> me = Owner.me()
>>> me.alive(), Owner(pid=me.pid, start="-1", host=me.host).alive()
(True, False)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: The owner record's file name in a directory.
OWNER = "owner"
#: Directories the local backend makes start so (run and launcher directories alike).
PREFIX = "fsdgraph-"
#: A launcher's socket directory starts so (see ``functions.WarmPool``).
LAUNCHER_PREFIX = "fsdgraph-launcher-"
#: In a launcher's socket directory: the launcher's own pid.
LAUNCHER_PID = "launcher.pid"
#: In a run directory: the mark of a run that is over (``functions.stop_workers``).
CLOSED = "closed"
#: A recorded pid whose process started this long after the record was written is another
#: process, which reuses the pid (seconds: well above clock-tick and timestamp rounding).
REUSED_AFTER_S = 5.0
#: What the command line of every process of the local backend holds.
MODULE = "fsdgraph.backends.local"


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from ``/proc``), or None where that
    cannot be read (no such process, or no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after the command, which may hold spaces
    return fields[19] if len(fields) > 19 else None


def started_at(pid: int) -> float | None:
    """When process ``pid`` started, in seconds since the epoch (None where unknown)."""
    ticks = process_start(pid)
    if ticks is None:
        return None
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return int(line.split()[1]) + int(ticks) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        pass
    return None


def recorded_process(record: Path) -> int | None:
    """The live process of this backend whose pid file (``pids/<name>.<pid>``) is ``record``;
    None if it is gone, or if its pid now belongs to a process that started after the record
    was written (a reused pid)."""
    try:
        pid = int(record.read_text())
        written = record.stat().st_mtime
    except (OSError, ValueError):
        return None
    if MODULE not in " ".join(command_line(pid)) or not pid_alive(pid):
        return None
    started = started_at(pid)
    if started is not None and started > written + REUSED_AFTER_S:
        return None
    return pid


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].startswith(("Z", "X"))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (a zombie has)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: it exists
        return True
    return not _zombie(pid)


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


@dataclass(frozen=True)
class Owner:
    """The process a directory belongs to."""

    pid: int
    start: str | None = None  #: :func:`process_start` of ``pid`` when it wrote the record
    host: str = field(default_factory=socket.gethostname)
    #: The pid namespace ``pid`` is in (containers sharing /dev/shm see each other's records).
    namespace: str | None = field(default_factory=_pid_namespace)

    @classmethod
    def me(cls) -> Owner:
        return cls(os.getpid(), process_start(os.getpid()))

    def alive(self) -> bool:
        """Whether the owner still runs. Of another machine or container (a shared temp dir or
        /dev/shm), or where it cannot be told, it is taken to be alive: nothing of it is ever
        removed then."""
        if self.host != socket.gethostname() or self.namespace != _pid_namespace():
            return True
        if not pid_alive(self.pid):
            return False
        if self.start is not None:
            now = process_start(self.pid)
            if now is not None and now != self.start:  # the pid was reused
                return False
        return True


def write_owner(directory: str | Path, owner: Owner | None = None) -> None:
    """Record ``owner`` (default: this process) in ``directory`` (atomically)."""
    path = Path(directory) / OWNER
    tmp = path.with_name(f".{OWNER}.{os.getpid()}")
    tmp.write_text(json.dumps(asdict(owner or Owner.me())))
    os.replace(tmp, path)


def read_owner(directory: str | Path) -> Owner | None:
    """The owner recorded in ``directory``; None if there is no (readable, well-formed) record."""
    try:
        found: Any = json.loads((Path(directory) / OWNER).read_text())
        start, namespace = found.get("start"), found.get("namespace")
        return Owner(pid=int(found["pid"]), start=None if start is None else str(start),
                     host=str(found["host"]),
                     namespace=None if namespace is None else str(namespace))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def make_directory(parent: str | Path, prefix: str) -> str:
    """A new directory ``<parent>/<prefix>XXXXXXXX`` owned by this process."""
    import tempfile

    directory = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        write_owner(directory)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return directory


def command_line(pid: int) -> list[str]:
    """The arguments of process ``pid`` ([] if unknown)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def serving(pid: int) -> str | None:
    """The socket of a launcher process, or of a process forked by one (which keeps its command
    line: ``python -m fsdgraph.backends.local serve SOCKET ...``); None for any other process."""
    args = command_line(pid)
    for i, arg in enumerate(args[:-2]):
        if arg == MODULE and args[i + 1] == "serve":
            return args[i + 2]
    return None


def kill(pid: int) -> bool:
    """SIGKILL ``pid``; whether it was alive."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        return False
    return True


@dataclass
class Swept:
    """A directory a dead owner left, and the processes of it still running."""

    kind: str  #: "run" or "launcher"
    path: str
    owner_pid: int
    processes: list[int] = field(default_factory=list)
    bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _size(directory: Path) -> int:
    total = 0
    for base, _, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(base, name)).st_size
    return total


def _run_processes(run_dir: Path) -> list[int]:
    """The live processes recorded in a run directory's ``pids/`` (of this backend only)."""
    found = []
    with contextlib.suppress(OSError):
        for record in (run_dir / "pids").iterdir():
            pid = recorded_process(record)
            if pid is not None:
                found.append(pid)
    return found


def _launcher_processes(directory: Path) -> list[int]:
    try:
        pid = int((directory / LAUNCHER_PID).read_text())
    except (OSError, ValueError):
        return []
    sock = serving(pid)
    if sock is None or Path(sock).parent != directory or not pid_alive(pid):
        return []
    return [pid]


def stale(parent: str | Path) -> list[Swept]:
    """What :func:`sweep` would remove in ``parent``."""
    found = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return []
    for entry in entries:
        if not entry.name.startswith(PREFIX):
            continue
        with contextlib.suppress(OSError):
            if not entry.is_dir(follow_symlinks=False):
                continue
        owner = read_owner(entry.path)
        if owner is None or owner.alive():
            continue
        path = Path(entry.path)
        if entry.name.startswith(LAUNCHER_PREFIX):
            found.append(Swept("launcher", str(path), owner.pid, _launcher_processes(path)))
        else:
            found.append(Swept("run", str(path), owner.pid, _run_processes(path)))
    return found


def sweep(parent: str | Path, *, dry_run: bool = False) -> list[Swept]:
    """Remove the directories in ``parent`` whose owner is dead, after killing the processes of
    them still running; return what was (``dry_run``: would be) removed."""
    # Runs before launchers: a killed launcher takes its workers with it, before they are
    # counted.
    found = sorted(stale(parent), key=lambda s: (s.kind != "run", s.path))
    for swept in found:
        swept.bytes = _size(Path(swept.path))
        if dry_run:
            continue
        alive = swept.processes
        if swept.kind == "run":  # closed first: nothing starts in it any more
            with contextlib.suppress(OSError):
                (Path(swept.path) / CLOSED).touch()
            alive = _run_processes(Path(swept.path))
            swept.processes = sorted({*swept.processes, *alive})
        for pid in alive:
            kill(pid)
        shutil.rmtree(swept.path, ignore_errors=True)
    return found


def orphans() -> list[int]:
    """Processes of the local backend (launchers and what they forked) whose coordinator is
    dead: their launcher's socket directory names a dead owner, or is gone while the process
    was re-parented to init. Linux only (``/proc``); elsewhere, none are found."""
    found = []
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []
    for pid in pids:
        if pid == os.getpid():
            continue
        sock = serving(pid)
        if sock is None or not pid_alive(pid):
            continue
        directory = Path(sock).parent
        owner = read_owner(directory)
        if owner is not None:
            dead = not owner.alive()
        else:
            dead = not directory.exists() and _parent(pid) == 1
        if dead:
            found.append(pid)
    return found


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


#: libc's ``prctl`` once looked up (a launcher looks it up before it forks: each fork is cheap).
_prctl: list[Any] = []


def set_parent_death_signal(signum: int) -> bool:
    """Ask the kernel to send ``signum`` to this process when its parent thread ends
    (``prctl(PR_SET_PDEATHSIG)``, Linux); whether that could be set."""
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        if not _prctl:
            import ctypes

            _prctl.append(ctypes.CDLL(None, use_errno=True).prctl)
        return int(_prctl[0](1, signum, 0, 0, 0)) == 0  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False


__all__ = ["OWNER", "Owner", "Swept", "make_directory", "orphans", "pid_alive", "process_start",
           "read_owner", "set_parent_death_signal", "stale", "sweep", "write_owner"]
