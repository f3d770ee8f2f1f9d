"""How much memory this machine has available, and a check that refuses what cannot fit.

Inputs are sized by what they declare (neurons, layers, an image count), so a typo or a hostile
file could ask for gigabytes. Before anything that big is allocated, the loaders and the command
line estimate the bytes and call :func:`check_memory`, which raises an ``InputError`` saying what
needs how much, instead of a ``MemoryError`` traceback or the kernel's OOM killer.

The available memory is Linux's ``MemAvailable`` (what can be allocated without swapping), lowered
to the room left under a cgroup (container) limit; elsewhere, the free physical pages. Where
neither can be read, nothing is refused.

>>> check_memory(1024, "a small thing")   # never refused
>>> format_bytes(3 * 2**30)
'3.0 GiB'
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from fsdgraph.errors import InputError

__all__ = ["available_bytes", "check_memory", "csr_bytes", "format_bytes"]

_CGROUP = Path("/sys/fs/cgroup")


def available_bytes() -> int | None:
    """Bytes this process can still allocate without swapping; None when unknown."""
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
                break
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        with contextlib.suppress(AttributeError, ValueError, OSError):
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    try:  # cgroup v2: the limit of this container, less what it uses
        limit = (_CGROUP / "memory.max").read_text().strip()
        if limit != "max":
            used = int((_CGROUP / "memory.current").read_text())
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units, for messages."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def csr_bytes(rows: int, nnz: int) -> int:
    """The bytes of a float32 CSR of ``rows`` rows and ``nnz`` nonzeros (int64 index arrays, as
    built; int32 ones take less)."""
    return 8 * (int(rows) + 1) + 12 * int(nnz)


def check_memory(need: int, what: str) -> None:
    """Raise InputError if ``need`` bytes exceed the memory available now.

    ``what`` says what needs them (``"--synthetic --neurons 1048576 --layers 120"``, a file).
    """
    have = available_bytes()
    if have is not None and need > have:
        raise InputError(f"{what} needs about {format_bytes(need)} of memory, but this machine "
                         f"has {format_bytes(have)} available")
