"""File helpers shared by the local transports."""

from __future__ import annotations

import os


def write_new(path: str | os.PathLike[str], data: bytes) -> None:
    """Create ``path`` (which must not exist) holding all of ``data``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
