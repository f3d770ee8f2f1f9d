"""msgpack with numpy arrays and CSR matrices, and nothing that can execute code.

Plans, shards and worker outputs cross process and network boundaries, so they are never pickled.
:func:`pack` makes one self-contained message: an array travels as msgpack extension type 1
(dtype from a fixed whitelist, shape, raw bytes), a CSR matrix as extension type 2 (shape,
indptr, indices, data) and a :class:`Joined` list of arrays as extension type 6 (their lengths
and their concatenation).

:func:`pack_parts` is for large payloads that a sealed object (:mod:`fsdgraph.sealed`) carries
as several parts anyway: part 0 is the msgpack message, and every array of at least
:data:`INLINE_BELOW` bytes is a part of its own, its raw bytes, which nobody copies or encodes
until the object body is joined, and which :func:`unpack_parts` reads back as a view of the
body (copied only where the body leaves it unaligned). Two cheap, lossless reductions apply
first to arrays of at least :data:`REDUCE_FROM` bytes (each one pass over the array, far less
than the checksum and the transfer of the bytes they save):

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
>>> parts = pack_parts({"a": np.arange(4096, dtype=np.int64), "b": np.ones(1000, np.float32)})
>>> len(parts), parts[1].nbytes       # "a" narrowed to uint16 in a part; "b" as one element
(2, 8192)
>>> back = unpack_parts(parts)
>>> back["a"].dtype, int(back["a"][-1]), back["b"][:3].tolist()
(dtype('int64'), 4095, [1.0, 1.0, 1.0])
>>> unpack_parts(pack_parts(Joined([np.arange(3), np.arange(2)])))
[array([0, 1, 2]), array([0, 1])]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
_JOINED = 6  # [lengths, concatenation], each an array extension
#: Arrays below this many bytes (after narrowing) stay inside part 0: a part of its own costs a
#: length and a checksum, which only pays for larger ones.
INLINE_BELOW = 4096
#: Elements a filled array may claim: its size is not bounded by bytes sent.
MAX_FILL = 1 << 32
#: Arrays below this many bytes go as they are (extension type 1): the reductions' per-array
#: cost only pays for larger ones.
REDUCE_FROM = 512
#: Average elements per piece from which a :class:`Joined` is reduced piece by piece (its
#: concatenation made once, in the stored dtype) rather than concatenated first.
JOIN_PIECES_FROM = 4096
#: Integer types an array may be narrowed to, narrowest first, with their ranges.
_NARROW = [(np.dtype(t), int(np.iinfo(t).min), int(np.iinfo(t).max))
           for t in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32)]
_DTYPES = {np.dtype(t).str: np.dtype(t) for t in (
    np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
    np.float32, np.float64)}


@dataclass(frozen=True)
class Joined:
    """1-D arrays of one dtype that travel as one (extension type 6: their lengths and their
    concatenation) and are read back as a list of arrays: one large array to encode instead of
    many small ones."""

    arrays: Sequence[np.ndarray]

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(a) for a in self.arrays), np.int64, len(self.arrays))

    def dtype(self) -> np.dtype[Any]:
        """The arrays' one dtype (int32 for no arrays); TypeError if they have several."""
        dtypes = {a.dtype for a in self.arrays}
        if len(dtypes) > 1 or any(a.ndim != 1 for a in self.arrays):
            raise TypeError("joined arrays must be 1-D arrays of one dtype")
        return dtypes.pop() if dtypes else np.dtype(np.int32)


def _split(lengths: Any, flat: Any) -> list[np.ndarray]:
    """The arrays of a :class:`Joined`: ``flat`` cut at ``lengths``, each piece over a buffer
    of its own (scipy copies an index or value array that is a small view of a larger one,
    ``_prune_array``, which would copy every weight of a shard again)."""
    if (not isinstance(lengths, np.ndarray) or not isinstance(flat, np.ndarray)
            or lengths.ndim != 1 or flat.ndim != 1 or lengths.dtype.kind not in "iu"
            or np.any(lengths < 0) or int(lengths.sum()) != len(flat)):
        raise ProtocolError("joined arrays: the lengths do not add up to the concatenation")
    if not len(lengths):
        return []
    raw = np.ascontiguousarray(flat).data.cast("B")
    ends = (np.cumsum(lengths) * flat.dtype.itemsize).tolist()
    # ``[:]``: a view whose base is an array of its own size, as scipy's check expects.
    return [np.frombuffer(raw[a:b], dtype=flat.dtype)[:]
            for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def _array_bytes(a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a)
    if a.dtype.str not in _DTYPES:
        raise TypeError(f"cannot serialise arrays of dtype {a.dtype}")
    return bytes(msgpack.packb([a.dtype.str, list(a.shape), a.tobytes()], use_bin_type=True))


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return msgpack.ExtType(_ARRAY, _array_bytes(obj))
    if isinstance(obj, Joined):
        dtype = obj.dtype()
        flat = np.concatenate(obj.arrays) if obj.arrays else np.zeros(0, dtype)
        return msgpack.ExtType(_JOINED, msgpack.packb(
            [msgpack.ExtType(_ARRAY, _array_bytes(obj.lengths())),
             msgpack.ExtType(_ARRAY, _array_bytes(flat))], use_bin_type=True))
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
    if code == _JOINED:
        return _split(*msgpack.unpackb(data, ext_hook=_ext_hook, raw=False))
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
    return a.size >= 2 and _all_bits(a, a.reshape(-1)[:1])


def _all_bits(a: np.ndarray, element: np.ndarray) -> bool:
    """Whether every element of ``a`` has the bits of ``element`` (one element, same dtype)."""
    if a.dtype.itemsize not in (1, 2, 4, 8):
        return False
    unsigned = f"u{a.dtype.itemsize}"
    value = element.view(unsigned)[0]
    bits = a.reshape(-1).view(unsigned)
    return bool(bits[0] == value) and bool(bits[-1] == value) and bool(np.all(bits == value))


def _narrowest(dtype: np.dtype[Any], lo: int, hi: int) -> np.dtype[Any]:
    """The narrowest integer type holding ``[lo, hi]``, if narrower than ``dtype``."""
    for t, t_min, t_max in _NARROW:
        if t.itemsize >= dtype.itemsize:
            break
        if t_min <= lo and hi <= t_max:
            return t
    return dtype


def _narrowed(a: np.ndarray) -> np.ndarray:
    """``a`` in the narrowest integer type that holds its range (itself if none is narrower)."""
    if a.dtype.kind not in "iu" or a.size == 0:
        return a
    stored = _narrowest(a.dtype, int(a.min()), int(a.max()))
    return a if stored == a.dtype else a.astype(stored)


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
        if _same_bits(a):
            return self._fill(a.dtype, list(a.shape), a.reshape(-1)[:1])
        return self._stored(_narrowed(a), a.dtype, list(a.shape))

    def joined(self, joined: Joined) -> msgpack.ExtType:
        """A :class:`Joined` with the reductions decided piece by piece, so the concatenation
        is made once, already in its stored dtype."""
        arrays, dtype, lengths = joined.arrays, joined.dtype(), joined.lengths()
        total = int(lengths.sum())
        if dtype.str not in _DTYPES:
            raise TypeError(f"cannot serialise arrays of dtype {dtype}")
        if not arrays or total < JOIN_PIECES_FROM * len(arrays):
            # Small pieces: a few reductions over their concatenation cost less than a few
            # per piece.
            data = self.array(np.concatenate(arrays) if arrays else np.zeros(0, dtype))
        else:
            pieces = [np.ascontiguousarray(a) for a in arrays if len(a)]
            first = pieces[0].reshape(-1)[:1]
            if all(_all_bits(p, first) for p in pieces):
                data = self._fill(dtype, [total], first)
            else:
                stored = _narrowest(dtype, min(int(p.min()) for p in pieces),
                                    max(int(p.max()) for p in pieces)) \
                    if dtype.kind in "iu" else dtype
                data = self._stored(np.concatenate(pieces, dtype=stored, casting="unsafe"),
                                    dtype, [total])
        return msgpack.ExtType(_JOINED, msgpack.packb([self.array(lengths), data],
                                                      use_bin_type=True))

    @staticmethod
    def _fill(dtype: np.dtype[Any], shape: list[int], element: np.ndarray) -> msgpack.ExtType:
        return msgpack.ExtType(_FILL, msgpack.packb([dtype.str, shape, element.tobytes()],
                                                    use_bin_type=True))

    def _stored(self, stored: np.ndarray, dtype: np.dtype[Any],
                shape: list[int]) -> msgpack.ExtType:
        """An array of ``dtype`` and ``shape`` whose values are ``stored`` (maybe narrower):
        in the message if small, else in a part of its own."""
        where: bytes | int
        if stored.nbytes < INLINE_BELOW:
            where = stored.tobytes()
        else:
            self.parts.append(stored.reshape(-1).data.cast("B"))
            where = len(self.parts)  # part 0 is the message itself
        return msgpack.ExtType(_STORED, msgpack.packb([dtype.str, shape, stored.dtype.str,
                                                       where], use_bin_type=True))

    def __call__(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            return self.array(obj)
        if isinstance(obj, Joined):
            return self.joined(obj)
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
        count, size = int(np.prod(shape, dtype=np.int64)), memoryview(raw).nbytes
        if size != count * stored.itemsize:
            raise ProtocolError(f"array of shape {list(shape)} and dtype {stored} has {size} "
                                "bytes")
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
        if code == _JOINED:
            return _split(*msgpack.unpackb(data, ext_hook=self, raw=False))
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
    ids, and every column id is in range. The arrays are not copied (unless scipy changes
    their index dtype)."""
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
