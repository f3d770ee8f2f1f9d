"""msgpack with numpy arrays and CSR matrices, and nothing that can execute code.

Plans, shards and worker outputs cross process and network boundaries, so they are never pickled.
:func:`pack` makes one self-contained message: an array travels as msgpack extension type 1
(dtype from a fixed whitelist, shape, raw bytes) and a CSR matrix as extension type 2 (shape,
indptr, indices, data).

:func:`pack_parts` is for large payloads that a sealed object (:mod:`fsdgraph.sealed`) carries
as several parts anyway: part 0 is the msgpack message, and every array of at least
:data:`INLINE_BELOW` bytes is a part of its own, its raw bytes, which nobody copies or encodes
until the object body is joined and :func:`unpack_parts` reads back as a zero-copy view. Two
cheap, lossless reductions apply first to arrays of at least :data:`REDUCE_FROM` bytes (each one
pass over the array, far less than the checksum and the transfer of the bytes they save):

* an array whose elements are all the same bits is sent as that one element (extension type 4:
  dtype, shape, the element's bytes), e.g. a uniform weight value or an all-ones input;
* an integer array is stored in the narrowest integer type that holds its range (extension
  type 3 names both dtypes), e.g. column ids below 65536 as uint16.

Extension type 3 is ``[dtype, shape, stored dtype, raw bytes or part index]`` and type 5 a CSR
matrix ``[shape, indptr, indices, data]`` of such arrays, checked in full when read (sorted
pointers, column ids in range). Arrays read from parts are read-only.

>>> import numpy as np
>>> unpack(pack({"a": np.arange(3, dtype=np.int32)}))["a"]
array([0, 1, 2], dtype=int32)
>>> parts = pack_parts({"a": np.arange(4096, dtype=np.int64), "b": np.ones(9, np.float32)})
>>> len(parts), parts[1].nbytes       # "a" narrowed to uint16 in a part; "b" as one element
(2, 8192)
>>> back = unpack_parts(parts)
>>> back["a"].dtype, int(back["a"][-1]), back["b"].tolist()
(dtype('int64'), 4095, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np
import scipy.sparse as sp

from fsdgraph.errors import ProtocolError

_ARRAY = 1
_CSR = 2
_STORED = 3  # [dtype, shape, stored dtype, raw bytes | part index]
_FILL = 4  # [dtype, shape, the one element's bytes]
_SPARSE = 5  # [shape, indptr, indices, data], each an array extension
#: Arrays below this many bytes (after narrowing) stay inside part 0: a part of its own costs a
#: length and a checksum, which only pays for larger ones.
INLINE_BELOW = 4096
#: Elements a filled array may claim: its size is not bounded by bytes sent.
MAX_FILL = 1 << 32
#: Arrays below this many bytes go as they are (extension type 1): the reductions' per-array
#: cost only pays for larger ones.
REDUCE_FROM = 512
#: Integer types an array may be narrowed to, narrowest first, with their ranges.
_NARROW = [(np.dtype(t), int(np.iinfo(t).min), int(np.iinfo(t).max))
           for t in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32)]
_DTYPES = {np.dtype(t).str: np.dtype(t) for t in (
    np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
    np.float32, np.float64)}


def _array_bytes(a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a)
    if a.dtype.str not in _DTYPES:
        raise TypeError(f"cannot serialise arrays of dtype {a.dtype}")
    return bytes(msgpack.packb([a.dtype.str, list(a.shape), a.tobytes()], use_bin_type=True))


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return msgpack.ExtType(_ARRAY, _array_bytes(obj))
    if sp.issparse(obj):
        m = sp.csr_matrix(obj)
        payload = [list(m.shape), _array_bytes(m.indptr), _array_bytes(m.indices),
                   _array_bytes(m.data)]
        return msgpack.ExtType(_CSR, msgpack.packb(payload, use_bin_type=True))
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def _array_from(data: bytes) -> np.ndarray:
    dtype_str, shape, raw = msgpack.unpackb(data, raw=False)
    dtype = _DTYPES.get(dtype_str)
    if dtype is None:
        raise ProtocolError(f"array of unsupported dtype {dtype_str!r}")
    count = int(np.prod(shape)) if shape else 1
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(f"array of shape {shape} and dtype {dtype} has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _ARRAY:
        return _array_from(data)
    if code == _CSR:
        shape, indptr, indices, values = msgpack.unpackb(data, raw=False)
        return sp.csr_matrix(
            (_array_from(values), _array_from(indices), _array_from(indptr)), shape=tuple(shape))
    raise ProtocolError(f"unknown msgpack extension type {code}")


def pack(obj: Any) -> bytes:
    """Serialise plain data, numpy arrays and scipy sparse matrices."""
    return bytes(msgpack.packb(obj, default=_default, use_bin_type=True))


def unpack(data: bytes) -> Any:
    """Inverse of :func:`pack`; raises ProtocolError on bytes it does not understand."""
    try:
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise ProtocolError(f"cannot decode msgpack payload: {exc}") from exc


# -- parts: large arrays out of band ----------------------------------------------------------
def _same_bits(a: np.ndarray) -> bool:
    """Whether every element of ``a`` (two or more) has the bits of the first (so 0.0 and
    -0.0, or two NaNs with different payloads, are not the same)."""
    if a.size < 2 or a.dtype.itemsize not in (1, 2, 4, 8):
        return False
    bits = a.reshape(-1).view(f"u{a.dtype.itemsize}")
    return bool(bits[0] == bits[-1]) and bool(np.all(bits == bits[0]))


def _narrowed(a: np.ndarray) -> np.ndarray:
    """``a`` in the narrowest integer type that holds its range (itself if none is narrower)."""
    if a.dtype.kind not in "iu" or a.size == 0:
        return a
    lo, hi = int(a.min()), int(a.max())
    for t, t_min, t_max in _NARROW:
        if t.itemsize >= a.dtype.itemsize:
            break
        if t_min <= lo and hi <= t_max:
            return a.astype(t)
    return a


class _Packer:
    """The ``default`` hook of :func:`pack_parts`: collects the out-of-band parts."""

    def __init__(self) -> None:
        self.parts: list[memoryview] = []

    def array(self, a: np.ndarray) -> msgpack.ExtType:
        if a.nbytes < REDUCE_FROM:
            return msgpack.ExtType(_ARRAY, _array_bytes(a))
        a = np.ascontiguousarray(a)
        if a.dtype.str not in _DTYPES:
            raise TypeError(f"cannot serialise arrays of dtype {a.dtype}")
        shape = list(a.shape)
        if _same_bits(a):
            return msgpack.ExtType(_FILL, msgpack.packb(
                [a.dtype.str, shape, a.reshape(-1)[:1].tobytes()], use_bin_type=True))
        stored = _narrowed(a)
        where: bytes | int
        if stored.nbytes < INLINE_BELOW:
            where = stored.tobytes()
        else:
            self.parts.append(stored.reshape(-1).data.cast("B"))
            where = len(self.parts)  # part 0 is the message itself
        return msgpack.ExtType(_STORED, msgpack.packb([a.dtype.str, shape, stored.dtype.str,
                                                       where], use_bin_type=True))

    def __call__(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            return self.array(obj)
        if sp.issparse(obj):
            m = obj if obj.format == "csr" else sp.csr_matrix(obj)
            payload = [list(m.shape), self.array(m.indptr), self.array(m.indices),
                       self.array(m.data)]
            return msgpack.ExtType(_SPARSE, msgpack.packb(payload, use_bin_type=True))
        return _default(obj)


def pack_parts(obj: Any) -> list[bytes | memoryview]:
    """Serialise ``obj`` as parts for :func:`fsdgraph.sealed.seal`: the message, then the raw
    bytes of its large arrays (views of the arrays themselves: keep them unchanged until the
    parts are sealed). See the module docstring."""
    packer = _Packer()
    message = bytes(msgpack.packb(obj, default=packer, use_bin_type=True))
    return [message, *packer.parts]


def _shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise ProtocolError(f"array shape {shape!r} is not a list of sizes")
    return tuple(shape)


def _dtype(name: Any) -> np.dtype[Any]:
    dtype = _DTYPES.get(name) if isinstance(name, str) else None
    if dtype is None:
        raise ProtocolError(f"array of unsupported dtype {name!r}")
    return dtype


class _Unpacker:
    """The ``ext_hook`` of :func:`unpack_parts`: arrays from their parts, each part used once."""

    def __init__(self, parts: Sequence[bytes | memoryview]) -> None:
        self.parts = parts
        self.used: set[int] = set()

    def stored(self, data: bytes) -> np.ndarray:
        name, shape_, stored_name, where = msgpack.unpackb(data, raw=False)
        dtype, stored, shape = _dtype(name), _dtype(stored_name), _shape(shape_)
        if stored != dtype and not (stored.kind in "iu" and dtype.kind in "iu"
                                    and np.can_cast(stored, dtype, "safe")):
            raise ProtocolError(f"array of dtype {dtype} cannot be stored as {stored}")
        if type(where) is int:
            if not 0 < where < len(self.parts) or where in self.used:
                raise ProtocolError(f"array in part {where}: no such part, or used twice")
            self.used.add(where)
            raw: bytes | memoryview = self.parts[where]
        elif isinstance(where, bytes):
            raw = where
        else:
            raise ProtocolError(f"array data is a {type(where).__name__}")
        count = int(np.prod(shape, dtype=np.int64))
        if len(memoryview(raw).cast("B")) != count * stored.itemsize:
            raise ProtocolError(f"array of shape {list(shape)} and dtype {stored} has "
                                f"{len(memoryview(raw).cast('B'))} bytes")
        a = np.frombuffer(raw, dtype=stored)
        if stored != dtype:
            a = a.astype(dtype)
        elif not a.flags.aligned:
            a = a.copy()
        return a.reshape(shape)

    @staticmethod
    def fill(data: bytes) -> np.ndarray:
        name, shape_, element = msgpack.unpackb(data, raw=False)
        dtype, shape = _dtype(name), _shape(shape_)
        count = int(np.prod(shape, dtype=np.int64))
        if not isinstance(element, bytes) or len(element) != dtype.itemsize:
            raise ProtocolError(f"filled array of dtype {dtype}: element of "
                                f"{len(element) if isinstance(element, bytes) else '?'} bytes")
        if count > MAX_FILL:
            raise ProtocolError(f"filled array of {count} elements (at most {MAX_FILL})")
        return np.repeat(np.frombuffer(element, dtype=dtype), count).reshape(shape)

    def sparse(self, data: bytes) -> sp.csr_matrix:
        shape, indptr, indices, values = msgpack.unpackb(data, ext_hook=self, raw=False)
        return checked_csr(shape, indptr, indices, values)

    def __call__(self, code: int, data: bytes) -> Any:
        if code == _STORED:
            return self.stored(data)
        if code == _FILL:
            return self.fill(data)
        if code == _SPARSE:
            return self.sparse(data)
        return _ext_hook(code, data)


def checked_csr(shape: Any, indptr: Any, indices: Any, values: Any) -> sp.csr_matrix:
    """A CSR matrix from its arrays, checked in full (the kernels index with them unchecked):
    ProtocolError unless the pointers start at 0, never fall and end at the number of column
    ids, and every column id is in range. The arrays are used as they are, not copied."""
    shape = _shape(shape)
    if len(shape) != 2 or not all(isinstance(a, np.ndarray) and a.ndim == 1
                                  for a in (indptr, indices, values)):
        raise ProtocolError("sparse matrix: malformed shape or arrays")
    if indptr.dtype.kind not in "iu" or indices.dtype.kind not in "iu":
        raise ProtocolError("sparse matrix: non-integer index arrays")
    nnz = len(indices)
    if (len(indptr) != shape[0] + 1 or len(values) != nnz or indptr[0] != 0
            or indptr[-1] != nnz or np.any(indptr[1:] < indptr[:-1])
            or (nnz and (int(indices.min()) < 0 or int(indices.max()) >= shape[1]))):
        raise ProtocolError(f"sparse matrix {list(shape)}: inconsistent index arrays")
    return sp.csr_matrix((values, indices, indptr), shape=shape)


def unpack_parts(parts: Sequence[bytes | memoryview]) -> Any:
    """Inverse of :func:`pack_parts`; raises ProtocolError on parts it does not understand, or
    a part no array uses."""
    if not parts:
        raise ProtocolError("no parts to decode")
    hook = _Unpacker(parts)
    try:
        obj = msgpack.unpackb(parts[0], ext_hook=hook, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException, TypeError, OverflowError) as exc:
        raise ProtocolError(f"cannot decode msgpack payload: {exc}") from exc
    if len(hook.used) != len(parts) - 1:
        raise ProtocolError(f"{len(parts) - 1 - len(hook.used)} of {len(parts) - 1} parts hold "
                            "no array")
    return obj
