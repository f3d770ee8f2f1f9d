"""An S3-like :class:`~fsdgraph.transport.ObjectStore` on a local directory.

On-disk layout under ``root``::

    root/
        .tmp/                   staging: every put writes here first (reserved name)
        run-1/layer3/chunk-0    the object with key "run-1/layer3/chunk-0"
        run-1/layer3/chunk-1
        ...

A key is a ``/``-separated string; each segment becomes a directory level and the last one the
file holding the object's bytes. Keys that could escape ``root`` or alias another key are refused
with a (not retryable) :class:`~fsdgraph.errors.TransportError` saying what is wrong, as S3
refuses a request with a key it cannot take: empty keys, absolute keys (leading ``/``), empty
segments (``a//b``, a trailing ``/``), ``.`` or ``..`` segments, NUL characters, segments longer
than the file system allows, and keys under the reserved ``.tmp`` directory.

Semantics, safe for several OS processes sharing one ``root``:

* ``put`` refuses an object above ``limits.max_object_bytes`` when ``limits`` is given (the rule
  is :class:`~fsdgraph.transport.ObjectStore`'s), then writes a uniquely named temporary file in
  ``root/.tmp`` (the same file system) and ``os.replace``-s it over the key's path, so a
  concurrent ``get`` sees the old object or the new one, never a partial file; concurrent puts of
  one key leave one of them whole (last rename wins).
* ``put_if_absent`` links the temporary file to the key's path instead: the link fails if the
  path exists, so of concurrent creates exactly one wins.
* ``get`` of a missing key raises :class:`~fsdgraph.errors.NotFound`.
* ``list(prefix)`` matches by plain string prefix (``"run-1/lay"`` matches ``"run-1/layer3/x"``)
  and returns the keys sorted.
* ``delete_prefix`` removes the matching objects, then the directories it left empty, and returns
  how many objects it removed (an object deleted by someone else meanwhile is not counted).

One limitation against S3: a key cannot also be a "directory" of other keys (``"a"`` and
``"a/b"`` cannot coexist, since ``a`` would have to be both a file and a directory); such a put
raises :class:`~fsdgraph.errors.TransportError` naming both.

The methods are coroutines. Small objects are read and written synchronously inside them (a
local file operation takes microseconds, less than handing it to a thread); objects of at least
``thread_threshold`` bytes go through :func:`asyncio.to_thread` so that they do not stall the
event loop. Nothing is fsync-ed: the store is for runs on one machine, not for durability.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import Sequence
from pathlib import Path

from fsdgraph.backends.local.files import write_new
from fsdgraph.errors import NotFound, TransportError
from fsdgraph.transport import Limits, ObjectStore

__all__ = ["DirectoryObjectStore"]

#: Name of the staging directory directly under root; no key may start with it.
TMP_DIR = ".tmp"
#: Objects of at least this many bytes are read/written in a worker thread.
DEFAULT_THREAD_THRESHOLD = 1024 * 1024
_NAME_MAX = 255


def _check_key(key: str) -> list[str]:
    """Return the key's segments, or raise TransportError saying what is wrong with it."""
    if not isinstance(key, str):
        raise TransportError(f"object key must be a str, got {type(key).__name__}")
    if not key:
        raise TransportError("object key must not be empty")
    if key.startswith("/"):
        raise TransportError(f"object key {key!r} must be relative (no leading '/')")
    if "\x00" in key:
        raise TransportError(f"object key {key!r} must not contain NUL characters")
    parts = key.split("/")
    for part in parts:
        if not part:
            raise TransportError(
                f"object key {key!r} has an empty segment ('//' or a trailing '/')")
        if part in (".", ".."):
            raise TransportError(f"object key {key!r} must not contain '.' or '..' segments")
        if len(part.encode("utf-8", "surrogateescape")) > _NAME_MAX:
            raise TransportError(
                f"object key {key!r} has a segment longer than {_NAME_MAX} bytes")
    if parts[0] == TMP_DIR:
        raise TransportError(f"object key {key!r} is under the reserved directory {TMP_DIR!r}")
    return parts


class DirectoryObjectStore(ObjectStore):
    """Objects as files under ``root`` (see the module docstring for layout and semantics)."""

    def __init__(
        self,
        root: str | Path,
        *,
        limits: Limits | None = None,
        thread_threshold: int = DEFAULT_THREAD_THRESHOLD,
    ) -> None:
        self.root = Path(root)
        self.limits = limits
        self.thread_threshold = thread_threshold
        self._tmp = self.root / TMP_DIR
        self._tmp.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*_check_key(key))

    # -- ObjectStore --------------------------------------------------------------------------
    async def _put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if len(data) >= self.thread_threshold:
            await asyncio.to_thread(self._put_sync, key, path, data)
        else:
            self._put_sync(key, path, data)

    async def _put_if_absent(self, key: str, data: bytes) -> bool:
        return self._put_sync(key, self._path(key), data, exclusive=True)

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            f = open(path, "rb", buffering=0)  # noqa: SIM115 (closed below, maybe in a thread)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"no object at key {key!r}") from None
        with f:
            if os.fstat(f.fileno()).st_size >= self.thread_threshold:
                return await asyncio.to_thread(f.readall)
            return f.readall()

    async def list(self, prefix: str) -> list[str]:
        return sorted(_find_keys(self.root, prefix))

    async def delete_prefix(self, prefix: str) -> int:
        keys = _find_keys(self.root, prefix)
        deleted = 0
        dirs: set[Path] = set()
        for key in keys:
            path = self.root.joinpath(*key.split("/"))
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            deleted += 1
            parent = path.parent
            while parent != self.root and parent not in dirs:
                dirs.add(parent)
                parent = parent.parent
        # Remove the directories left empty, deepest first; one that a concurrent put has just
        # filled again stays (ENOTEMPTY), and that put retries if we removed it under its feet.
        for directory in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        return deleted

    async def wait_for(self, keys: Sequence[str], timeout_s: float) -> None:
        """Return once an object may have been written next to ``keys`` (same prefix directory),
        or after ``timeout_s``: readers of known keys wake at once instead of polling."""
        if not keys:
            await asyncio.sleep(timeout_s)
            return
        bell = self._bell(keys[0])
        with contextlib.suppress(FileExistsError):
            os.mkfifo(bell)
        fd = os.open(bell, os.O_RDWR | os.O_NONBLOCK)  # RDWR: never sees end-of-file
        try:
            # Registered first, checked second: a put between the two still rings.
            if any(os.path.exists(self._path(k)) for k in keys):
                return
            loop = asyncio.get_running_loop()
            rang: asyncio.Future[None] = loop.create_future()

            def wake() -> None:
                if not rang.done():
                    rang.set_result(None)

            loop.add_reader(fd, wake)
            try:
                await asyncio.wait_for(rang, timeout_s)
            except TimeoutError:
                pass
            finally:
                loop.remove_reader(fd)
            with contextlib.suppress(BlockingIOError):
                os.read(fd, 4096)
        finally:
            os.close(fd)

    # -- helpers ------------------------------------------------------------------------------
    def _bell(self, key: str) -> str:
        """The doorbell FIFO of the directory holding ``key`` (kept in the reserved .tmp)."""
        parent = key.rpartition("/")[0]
        return str(self._tmp / ("bell-" + parent.replace("%", "%25").replace("/", "%2F")))

    def _ring(self, key: str) -> None:
        try:
            fd = os.open(self._bell(key), os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # no FIFO (nobody ever waited here) or no reader right now
            return
        try:
            os.write(fd, b"\0")
        except (BlockingIOError, BrokenPipeError):
            pass  # full of rings already, or the reader just left: nobody to wake
        finally:
            os.close(fd)

    def _put_sync(self, key: str, path: Path, data: bytes, *, exclusive: bool = False) -> bool:
        """Write ``data`` to a temporary file and move it to ``path``: by rename (the last put
        wins) or, ``exclusive``, by a hard link, which fails if ``path`` exists (the first
        create wins). True if the object was written."""
        tmp = self._tmp / f"{os.getpid()}-{os.urandom(8).hex()}"
        done = False
        try:
            write_new(tmp, data)
            for _attempt in range(100):
                try:
                    if exclusive:
                        try:
                            os.link(tmp, path)
                        except FileExistsError:
                            return False
                    else:
                        os.replace(tmp, path)
                        done = True
                    self._ring(key)
                    return True
                except (FileNotFoundError, NotADirectoryError):
                    # The parent directory is missing, or a concurrent delete_prefix removed it
                    # between our makedirs and the rename: (re)create it and try again.
                    self._makedirs(key, path.parent)
                except IsADirectoryError:
                    raise TransportError(
                        f"cannot put key {key!r}: keys under {key + '/'!r} exist, and this "
                        "directory-backed store cannot hold an object that is also a prefix "
                        "directory"
                    ) from None
            raise TransportError(f"could not create the directories for key {key!r}")
        finally:
            if not done:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    def _makedirs(self, key: str, directory: Path) -> None:
        try:
            os.makedirs(directory, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            # Some ancestor exists as a file, i.e. as an object.
            parent = directory
            while parent != self.root and not parent.is_file():
                parent = parent.parent
            other = "/".join(parent.relative_to(self.root).parts) or "?"
            raise TransportError(
                f"cannot put key {key!r}: an object exists at key {other!r}, and this "
                "directory-backed store cannot hold an object that is also a prefix directory"
            ) from None


def _find_keys(root: Path, prefix: str) -> list[str]:
    """Every key starting with ``prefix`` (unsorted). No key matches an invalid prefix."""
    if not isinstance(prefix, str):
        raise TransportError(f"prefix must be a str, got {type(prefix).__name__}")
    head, _, tail = prefix.rpartition("/")
    if head:
        dir_parts = head.split("/")
        if any(p in ("", ".", "..") or "\x00" in p for p in dir_parts):
            return []
        if dir_parts[0] == TMP_DIR:
            return []
        start = root.joinpath(*dir_parts)
        key_prefix = head + "/"
    else:
        start = root
        key_prefix = ""
    if "\x00" in tail:
        return []
    keys: list[str] = []
    try:
        entries = list(os.scandir(start))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        if not entry.name.startswith(tail):
            continue
        if not head and entry.name == TMP_DIR:
            continue
        _walk(entry, key_prefix + entry.name, keys)
    return keys


def _walk(entry: os.DirEntry[str], key: str, out: list[str]) -> None:
    try:
        is_dir = entry.is_dir(follow_symlinks=False)
    except OSError:
        return
    if not is_dir:
        out.append(key)
        return
    try:
        children = list(os.scandir(entry.path))
    except OSError as exc:  # removed meanwhile
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return
        raise
    for child in children:
        _walk(child, f"{key}/{child.name}", out)
