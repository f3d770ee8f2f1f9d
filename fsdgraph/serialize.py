"""msgpack with numpy arrays and CSR matrices, and nothing that can execute code.

Plans, shards and worker outputs cross process and network boundaries, so they are never pickled:
an array travels as msgpack extension type 1 (dtype from a fixed whitelist, shape, raw bytes) and
a CSR matrix as extension type 2 (shape, indptr, indices, data).

>>> import numpy as np
>>> unpack(pack({"a": np.arange(3, dtype=np.int32)}))["a"]
array([0, 1, 2], dtype=int32)
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import scipy.sparse as sp

from fsdgraph.errors import ProtocolError

_ARRAY = 1
_CSR = 2
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
