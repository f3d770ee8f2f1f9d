"""Sealed objects: what a run keeps in its object store, tagged under the run's key.

Every object a run writes (a worker's plan shard and input columns, an exchange edge, a
checkpoint, the attempt marker, a worker's output) is a msgpack list
``[format, run id, [parts], tag]`` whose tag (:mod:`fsdgraph.integrity`) covers the run, the
object's key, and the checksum of every part. A reader gets the parts back only if all of it
verifies: an object damaged in storage or transit, written by someone without the run's key,
written for another run, or copied to another key is refused, never used.

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

import msgpack

from fsdgraph.errors import ProtocolError
from fsdgraph.integrity import checksum
from fsdgraph.resources import RunNames

#: The first element of a sealed object: its layout.
FORMAT = "fsd-sealed-1"
#: Bytes a seal adds around its parts (format, run id, list headers, tag).
OVERHEAD = 64


def seal(names: RunNames, key: str, parts: Sequence[bytes]) -> bytes:
    """The object to store under ``key`` holding ``parts``."""
    tag = names.key.tag(names.run_id, key, str(len(parts)), *map(checksum, parts))
    return bytes(msgpack.packb([FORMAT, names.run_id, list(parts), tag], use_bin_type=True))


def unseal(names: RunNames, key: str, body: bytes) -> list[tuple[bytes, str]] | None:
    """The parts (each with its checksum) of the object ``body`` read from ``key``; None if it
    is not an intact object of this run sealed for this key."""
    try:
        fmt, run_id, parts, tag = msgpack.unpackb(body, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if (fmt != FORMAT or run_id != names.run_id or not isinstance(parts, list)
            or not all(isinstance(p, bytes) for p in parts)):
        return None
    sums = [checksum(p) for p in parts]
    if not names.key.verify(tag, names.run_id, key, str(len(parts)), *sums):
        return None
    return list(zip(parts, sums, strict=True))


def unseal_one(names: RunNames, key: str, body: bytes) -> bytes:
    """The single part of the sealed object ``body`` read from ``key``; ProtocolError naming the
    key if it does not verify (for objects written once and never replaced: there is nothing
    to wait for)."""
    parts = unseal(names, key, body)
    if parts is None or len(parts) != 1:
        raise ProtocolError(f"object {key} failed its integrity check (damaged, or not written "
                            f"by this run)")
    return parts[0][0]
