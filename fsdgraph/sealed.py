"""Sealed objects: what a run keeps in its object store, tagged under the run's key.

Every object a run writes (a worker's plan shard and input columns, an exchange edge, a
checkpoint, the attempt marker, a worker's output) is a msgpack list
``[format, run id, [parts], tag]`` whose tag (:mod:`fsdgraph.integrity`) covers the run, the
object's key, and the checksum of every part. A reader gets the parts back only if all of it
verifies: an object damaged in storage or transit, written by someone without the run's key,
written for another run, or copied to another key is refused, never used.

The parts are msgpack byte strings, so their bytes lie in the body as they are: :func:`seal`
joins them into the body in one copy (msgpack's packer would copy a large part several times as
its buffer grows), and :func:`unseal_parts` returns views of the body instead of copies. Both
read and write exactly the bytes of ``msgpack.packb([format, run id, parts, tag])``.

An object whose parts are arrays to be used in place (plan shards, model programs, inputs) is
sealed **aligned** (``seal(..., align=ALIGN)``, format :data:`ALIGNED_FORMAT`): each part is
preceded in the list by a padding byte string of fewer than :data:`ALIGN` zero bytes, so that
every part starts on an :data:`ALIGN`-byte boundary of the body. numpy then uses the weights
where they lie (an unaligned array would be copied before BLAS could use it), and a worker holds
its weights once, not twice.

>>> from fsdgraph.integrity import RunKey
>>> from fsdgraph.resources import RunNames
>>> names = RunNames("r1", key=RunKey.generate())
>>> body = seal(names, "runs/r1/x/1/0/2", [b"chunk"])
>>> [part for part, _ in unseal(names, "runs/r1/x/1/0/2", body)]
[b'chunk']
>>> unseal(names, "runs/r1/x/1/0/3", body) is None
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import msgpack

from fsdgraph.errors import ProtocolError
from fsdgraph.integrity import checksum
from fsdgraph.resources import RunNames

#: The first element of a sealed object: its layout.
FORMAT = "fsd-sealed-2"
#: The layout of an aligned object: a padding byte string before each part.
ALIGNED_FORMAT = "fsd-sealed-3"
#: Where the parts of an aligned object start: a multiple of this many bytes into the body (a
#: cache line; Python's bytes and the allocators' blocks start on 16-byte boundaries).
ALIGN = 64
#: Bytes a seal adds around its parts (format, run id, list headers, tag).
OVERHEAD = 64

#: A part as a writer hands it over: any contiguous bytes-like object (a numpy array's buffer
#: is not copied until the body is joined).
Part = bytes | bytearray | memoryview




def _array_header(n: int) -> bytes:
    """msgpack's (shortest) header of a list of ``n`` items."""
    if n < 16:
        return bytes([0x90 | n])
    return b"\xdc" + n.to_bytes(2, "big") if n < 1 << 16 else b"\xdd" + n.to_bytes(4, "big")


def _bin_header(n: int) -> bytes:
    """msgpack's (shortest) header of a byte string of ``n`` bytes."""
    if n < 1 << 8:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 1 << 16:
        return b"\xc5" + n.to_bytes(2, "big")
    if n < 1 << 32:
        return b"\xc6" + n.to_bytes(4, "big")
    raise ValueError(f"a part of {n} bytes is too large for an object")


def seal(names: RunNames, key: str, parts: Sequence[Part], align: int = 0) -> bytes:
    """The object to store under ``key`` holding ``parts`` (each copied once, into the body);
    with ``align`` (:data:`ALIGN`), every part starts on a multiple of it."""
    views = [memoryview(p).cast("B") for p in parts]
    tag = names.key.tag(names.run_id, key, str(len(views)), *map(checksum, views))
    pieces: list[Part] = [b"\x94", msgpack.packb(ALIGNED_FORMAT if align else FORMAT),
                          msgpack.packb(names.run_id),
                          _array_header(2 * len(views) if align else len(views))]
    at = sum(len(p) for p in pieces)
    for v in views:
        header = _bin_header(v.nbytes)
        if align:
            # a pad of k zero bytes (a 2-byte header) puts the part's first byte on a boundary
            k = -(at + 2 + len(header)) % align
            pieces += [_bin_header(k), bytes(k)]
            at += 2 + k
        pieces += [header, v]
        at += len(header) + v.nbytes
    pieces.append(msgpack.packb(tag))
    return b"".join(pieces)


class _Malformed(Exception):
    """The body is not a sealed object's msgpack list."""


class _Reader:
    """Reads the msgpack list of a sealed object without copying its parts."""

    #: Length-prefix byte counts of the headers of str, bin and list items by type byte.
    _STR: ClassVar[dict[int, int]] = {0xD9: 1, 0xDA: 2, 0xDB: 4}
    _BIN: ClassVar[dict[int, int]] = {0xC4: 1, 0xC5: 2, 0xC6: 4}
    _ARRAY: ClassVar[dict[int, int]] = {0xDC: 2, 0xDD: 4}

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.at = 0

    def _take(self, n: int) -> memoryview:
        if self.at + n > self.data.nbytes:
            raise _Malformed
        self.at += n
        return self.data[self.at - n:self.at]

    def _length(self, fixed: tuple[int, int] | None, prefixed: dict[int, int]) -> int:
        """The length in the next item's header: a fix type (``(base, mask)``: the length in
        the type byte) or one with a length prefix of ``prefixed[type]`` bytes."""
        kind = self._take(1)[0]
        if fixed is not None and kind & ~fixed[1] == fixed[0]:
            return kind & fixed[1]
        if kind not in prefixed:
            raise _Malformed
        return int.from_bytes(self._take(prefixed[kind]), "big")

    def text(self) -> str:
        raw = self._take(self._length((0xA0, 0x1F), self._STR))
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise _Malformed from None

    def parts(self) -> list[memoryview]:
        return [self._take(self._length(None, self._BIN))
                for _ in range(self._length((0x90, 0x0F), self._ARRAY))]

    def list_of_four(self) -> None:
        if self._take(1)[0] != 0x94:
            raise _Malformed

    def end(self) -> None:
        if self.at != self.data.nbytes:
            raise _Malformed


def unseal_views(names: RunNames, key: str,
                 body: bytes | memoryview) -> list[tuple[memoryview, str]] | None:
    """The parts (each with its checksum) of the object ``body`` read from ``key``, as views of
    ``body``; None if it is not an intact object of this run sealed for this key."""
    reader = _Reader(memoryview(body).cast("B"))
    try:
        reader.list_of_four()
        fmt, run_id, parts, tag = reader.text(), reader.text(), reader.parts(), reader.text()
        reader.end()
    except _Malformed:
        return None
    if fmt == ALIGNED_FORMAT:
        pads, parts = parts[0::2], parts[1::2]
        if len(pads) != len(parts) or any(p.nbytes >= ALIGN or any(p) for p in pads):
            return None
    elif fmt != FORMAT:
        return None
    if run_id != names.run_id:
        return None
    sums = [checksum(p) for p in parts]
    if not names.key.verify(tag, names.run_id, key, str(len(parts)), *sums):
        return None
    return list(zip(parts, sums, strict=True))


def unseal(names: RunNames, key: str, body: bytes) -> list[tuple[bytes, str]] | None:
    """The parts (each with its checksum) of the object ``body`` read from ``key``; None if it
    is not an intact object of this run sealed for this key."""
    parts = unseal_views(names, key, body)
    return None if parts is None else [(bytes(p), s) for p, s in parts]


def unseal_parts(names: RunNames, key: str, body: bytes) -> list[memoryview]:
    """Every part of the sealed object ``body`` read from ``key``, as views of ``body`` (not
    copies); ProtocolError naming the key if it does not verify (for objects written once and
    never replaced: there is nothing to wait for)."""
    parts = unseal_views(names, key, body)
    if parts is None:
        raise ProtocolError(f"object {key} failed its integrity check (damaged, or not written "
                            f"by this run)")
    return [p for p, _ in parts]


def unseal_one(names: RunNames, key: str, body: bytes) -> bytes:
    """The single part of the sealed object ``body`` read from ``key``; ProtocolError naming the
    key if it does not verify or holds another number of parts."""
    parts = unseal_parts(names, key, body)
    if len(parts) != 1:
        raise ProtocolError(f"object {key} failed its integrity check (damaged, or not written "
                            f"by this run)")
    return bytes(parts[0])
