"""Sealed objects: what a run keeps in its object store, tagged under the run's key.

Every object a run writes (a worker's plan shard and input columns, an exchange edge, a
checkpoint, the attempt marker, a worker's output) is a list of byte parts under a tag
(:mod:`fsdgraph.integrity`) that covers the layout, the run, the object's key, and the checksum
of every part. A reader gets the parts back only if all of it verifies: an object damaged in
storage or transit, written by someone without the run's key, written for another run, or copied
to another key is refused, never used.

The layout (``fsd-sealed-2``) keeps the parts as they are, so neither side copies or re-encodes
them: a reader takes zero-copy views of a large object's parts (:func:`unseal_parts`), and each
part starts at a multiple of 8 bytes, so a numpy array read from it is aligned::

    magic b"fsdS" | header length (uint32, little-endian) | header | zeros to a multiple of 8
    part 0 | zeros to a multiple of 8 | part 1 | zeros to a multiple of 8 | ...

where the header is the msgpack list ``[run id, [length of each part], tag]``. The lengths
account for every byte: anything else (a short or long body, a nonzero pad byte) is refused.

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

import hashlib
import struct
from collections.abc import Sequence

import msgpack

from fsdgraph.errors import ProtocolError
from fsdgraph.integrity import DIGEST_BYTES
from fsdgraph.resources import RunNames

#: The layout of a sealed object; it is the first thing the tag covers.
FORMAT = "fsd-sealed-2"
#: Bytes a seal adds around one small part (magic, header, padding), for cost estimates; each
#: further part adds its length to the header and up to 7 bytes of padding.
OVERHEAD = 64

#: A part as a writer hands it over: any contiguous bytes-like object (a numpy array's
#: ``memoryview`` is stored without a copy until the body is joined).
Part = bytes | bytearray | memoryview

_MAGIC = b"fsdS"
_PREFIX = struct.Struct("<4sI")
_ALIGN = 8
#: More parts than any object of a run holds: a header claiming more is refused before use.
MAX_PARTS = 1 << 20


def _pad(n: int) -> int:
    """Zero bytes after ``n`` bytes to reach the next multiple of :data:`_ALIGN`."""
    return -n % _ALIGN


def _digest(part: Part) -> str:
    """:func:`fsdgraph.integrity.checksum` of any buffer, without copying it to ``bytes``."""
    return hashlib.blake2b(part, digest_size=DIGEST_BYTES).hexdigest()


def _tag(names: RunNames, key: str, sums: Sequence[str]) -> str:
    return names.key.tag(FORMAT, names.run_id, key, str(len(sums)), *sums)


def seal(names: RunNames, key: str, parts: Sequence[Part]) -> bytes:
    """The object to store under ``key`` holding ``parts`` (the parts are copied once, into the
    body)."""
    views = [memoryview(p).cast("B") for p in parts]
    header = msgpack.packb([names.run_id, [v.nbytes for v in views],
                            _tag(names, key, [_digest(v) for v in views])], use_bin_type=True)
    pieces: list[Part] = [_PREFIX.pack(_MAGIC, len(header)), header,
                          bytes(_pad(_PREFIX.size + len(header)))]
    for v in views:
        pieces += [v, bytes(_pad(v.nbytes))]
    return b"".join(pieces)


def unseal_views(names: RunNames, key: str,
                 body: bytes | memoryview) -> list[tuple[memoryview, str]] | None:
    """The parts (each with its checksum) of the object ``body`` read from ``key``, as zero-copy
    views of ``body``; None if it is not an intact object of this run sealed for this key."""
    data = memoryview(body).cast("B")
    if data.nbytes < _PREFIX.size:
        return None
    magic, size = _PREFIX.unpack_from(data)
    start = _PREFIX.size + size
    if magic != _MAGIC or start > data.nbytes:
        return None
    try:
        run_id, lengths, tag = msgpack.unpackb(data[_PREFIX.size:start], raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if (run_id != names.run_id or not isinstance(lengths, list) or len(lengths) > MAX_PARTS
            or not all(type(n) is int and n >= 0 for n in lengths)):
        return None
    bounds, at, pads = [], start + _pad(start), [(start, start + _pad(start))]
    for n in lengths:
        bounds.append((at, at + n))
        pads.append((at + n, at + n + _pad(n)))
        at += n + _pad(n)
    if at != data.nbytes or any(data[a:b] != bytes(b - a) for a, b in pads if b > a):
        return None
    parts = [data[a:b] for a, b in bounds]
    sums = [_digest(p) for p in parts]
    if not names.key.verify(tag, FORMAT, names.run_id, key, str(len(sums)), *sums):
        return None
    return list(zip(parts, sums, strict=True))


def unseal(names: RunNames, key: str, body: bytes) -> list[tuple[bytes, str]] | None:
    """The parts (each with its checksum) of the object ``body`` read from ``key``; None if it
    is not an intact object of this run sealed for this key."""
    parts = unseal_views(names, key, body)
    return None if parts is None else [(bytes(p), s) for p, s in parts]


def unseal_parts(names: RunNames, key: str, body: bytes) -> list[memoryview]:
    """Every part of the sealed object ``body`` read from ``key``, as zero-copy views;
    ProtocolError naming the key if it does not verify (for objects written once and never
    replaced: there is nothing to wait for)."""
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
