"""Loaders for the official MIT/IEEE/Amazon Graph Challenge sparse-DNN files.

Formats (all 1-based, whitespace/TAB separated, plain or gzip; gzip is recognised by its magic
bytes, and a missing ``x.tsv`` is also looked for as ``x.tsv.gz`` and the other way round):

- weights ``n{N}-l{k}.tsv``: ``row col value``, row = input neuron, col = output neuron
  (Graph Challenge convention ``Y' = h(Y @ W + b)``), loaded as an N x N float32 CSR;
- images ``sparse-images-{N}.tsv``: ``image pixel value``, a (images x N) float32 CSR;
- truth ``neuron{N}-l{L}-categories.tsv``: one image id per line (may be empty).

Why this shape: 120 official layers are 4 million lines, so parsing is vectorised (split the bytes,
convert whole columns with numpy, check ranges with array operations: about 2.5 s on one core).
Only when something is wrong is the file scanned line by line, to raise an ``InputError`` that
says ``path:line: reason``. Duplicate entries are errors rather than silently summed.

>>> graphchallenge_bias(4096)
-0.35
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, NoReturn

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from fsdgraph.errors import InputError
from fsdgraph.sources.memory import check_memory, csr_bytes

if TYPE_CHECKING:
    from fsdgraph.graph import Graph

__all__ = [
    "BIASES",
    "find_file",
    "graphchallenge_bias",
    "load_images",
    "load_truth",
    "load_weights",
]

#: The bias of every neuron of the official networks, by network size.
BIASES: Final[Mapping[int, float]] = MappingProxyType(
    {1024: -0.30, 4096: -0.35, 16384: -0.40, 65536: -0.45}
)

_GZIP_MAGIC = b"\x1f\x8b"
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[list(b" \t\n\r\x0b\x0c")] = True  # exactly what bytes.split() splits on
#: Without a declared image count, image ids may exceed the number of entries in the file by
#: at most this many (images without any pixel); the official files number images 1..N and
#: every image has pixels, so an id far above the entries is a corrupt or hostile line.
IMAGE_ID_SLACK: Final = 1024
#: Parsing holds about this many bytes per byte of text (the token list, the index arrays).
PARSE_BYTES_PER_TEXT_BYTE: Final = 20
#: Neurons are multiplied by each other into int64 keys (duplicate checks).
MAX_NEURONS: Final = 2**31 - 1

PathLike = str | os.PathLike[str]


def graphchallenge_bias(neurons: int) -> float:
    """Return the official bias for a network of ``neurons`` neurons per layer.

    Raises InputError for sizes the Graph Challenge did not publish.
    """
    try:
        return BIASES[neurons]
    except (KeyError, TypeError):
        known = ", ".join(f"{n} ({b})" for n, b in BIASES.items())
        raise InputError(
            f"no Graph Challenge bias for {neurons!r} neurons; known sizes: {known}"
        ) from None


def graphchallenge_network(weights: list[sp.csr_matrix],
                           bias: float | None = None) -> Graph:
    """The Graph Challenge network of ``weights``: per layer ``Y @ W + bias`` where the product
    is nonzero (a dead neuron stays dead), then a ReLU capped at 32; ``bias`` defaults to the
    official one for the layer width.

    >>> import numpy as np, scipy.sparse as sp
    >>> g = graphchallenge_network([sp.eye(1024, format="csr", dtype=np.float32)] * 2)
    >>> [(layer.bias_on_nonzero, layer.cap) for layer in g.layers()]
    [(True, 32.0), (True, 32.0)]
    """
    from fsdgraph.graph import sequential

    if bias is None:
        bias = graphchallenge_bias(weights[0].shape[0] if weights else 0)
    return sequential(weights, bias, cap=32.0, bias_on_nonzero=True)


def find_file(path: PathLike) -> Path:
    """``path``, or its twin with ``.gz`` added or removed, whichever exists first; InputError
    naming both if neither does (how the loaders look for images and truth files)."""
    return _find(_variants(Path(path)))


def load_weights(directory: PathLike, neurons: int, layers: int) -> list[sp.csr_matrix]:
    """Read layers ``1..layers`` of the official ``neurons``-wide network from ``directory``.

    Each ``n{N}-l{k}.tsv`` (or ``.tsv.gz``) becomes an N x N float32 CSR with sorted indices.
    ``directory`` may also be the folder that holds ``neuron{N}/``, as in the official archive.
    """
    _check_positive("neurons", neurons, high=MAX_NEURONS)
    _check_positive("layers", layers)
    base = Path(directory)
    matrices = []
    for k in range(1, layers + 1):
        name = f"n{neurons}-l{k}.tsv"
        path = _find([base / name, base / f"{name}.gz", *_nested(base, neurons, name)])
        rows, cols, values = _triplets(path, ("row", "col"), (neurons, neurons))
        if not np.count_nonzero(values):
            raise InputError(f"{path}: no nonzero weights (layer {k} would be all zero, and so "
                             f"would every activation after it); expected lines 'row col value'")
        check_memory(csr_bytes(neurons, rows.size) * 2,
                     f"{path} (layer {k}, {rows.size} weights) on top of the layers before it")
        matrices.append(_csr(rows, cols, values, (neurons, neurons)))
    return matrices


def load_images(path: PathLike, neurons: int, count: int | None = None) -> sp.csr_matrix:
    """Read an image file into a (count x neurons) float32 CSR.

    Without ``count`` the number of rows is the largest image id, which may exceed the number
    of entries (lines) in the file by at most ``IMAGE_ID_SLACK``: the official files number
    their images 1..N, so a larger id is refused (``InputError`` with the line) rather than
    sizing the matrix by it. With ``count``, an image id above ``count`` is an error. Either
    way the matrix's memory is checked against the machine's before it is allocated.
    """
    _check_positive("neurons", neurons, high=MAX_NEURONS)
    if count is not None:
        _check_positive("count", count, allow_zero=True, high=(2**63 - 1) // neurons)
        check_memory(csr_bytes(count, 0), f"count={count} images")
    found = _find(_variants(Path(path)))
    images, pixels, values = _triplets(found, ("image", "pixel"), (count, neurons),
                                       slack=IMAGE_ID_SLACK if count is None else None)
    largest = int(images.max()) + 1 if images.size else 0
    rows = largest if count is None else int(count)
    check_memory(csr_bytes(rows, images.size) * 2, f"{found} ({rows} images x {neurons} pixels)")
    return _csr(images, pixels, values, (rows, neurons))


def load_truth(path: PathLike) -> npt.NDArray[np.int64]:
    """Read a categories file: return the 0-based image ids, sorted (empty file: none)."""
    found = _find(_variants(Path(path)))
    text = _read(found)
    tokens = text.split()
    line_of = _token_lines(text)
    _check_fields(found, line_of, 1, "image id")
    try:
        ids = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        _scan_numbers(found, tokens, line_of, ("image id",), ())
    lines = line_of + 1
    _check_range(found, "image id", ids, lines, None)
    _check_duplicates(found, ids - 1, lines, lambda key: f"image id {key + 1}")
    return np.sort(ids - 1)


def _triplets(
    path: Path, names: tuple[str, str], limits: tuple[int | None, int], *,
    slack: int | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Parse ``index index value`` lines into 0-based indices and float32 values.

    With ``slack`` (and no first limit), the first index may be at most the number of entries
    plus ``slack``.
    """
    text = _read(path)
    check_memory(len(text) * PARSE_BYTES_PER_TEXT_BYTE, f"parsing {path} ({len(text)} bytes)")
    tokens = text.split()
    line_of = _token_lines(text)
    _check_fields(path, line_of, 3, f"{names[0]}, {names[1]}, value")
    try:
        first = np.array(tokens[0::3], dtype=np.int64)
        second = np.array(tokens[1::3], dtype=np.int64)
        values = np.array(tokens[2::3], dtype=np.float64)
    except (ValueError, OverflowError):
        _scan_numbers(path, tokens, line_of, names, ("value",))
    lines = line_of[0::3] + 1  # every non-blank line has 3 fields: checked above
    if limits[0] is None and slack is not None:
        _check_range(path, names[0], first, lines, first.size + slack,
                     f" (the file has {first.size} entr{'y' if first.size == 1 else 'ies'}; "
                     f"without a declared count, {names[0]} ids may exceed them by at most "
                     f"{slack}: Graph Challenge files number their {names[0]}s 1..N)")
    else:
        _check_range(path, names[0], first, lines, limits[0])
    _check_range(path, names[1], second, lines, limits[1])
    # Finiteness is checked on what is kept: a float64 beyond float32's range becomes inf.
    with np.errstate(over="ignore"):
        kept = values.astype(np.float32)
    bad = ~np.isfinite(kept)
    if bad.any():
        at = int(np.argmax(bad))
        why = "is not finite" if not np.isfinite(values[at]) else "overflows float32"
        raise _error(path, lines[at], f"value {_token(tokens[3 * at + 2])} {why}")
    first -= 1
    second -= 1
    width = limits[1]
    _check_duplicates(
        path,
        first * width + second,
        lines,
        lambda key: f"{names[0]} {key // width + 1}, {names[1]} {key % width + 1}",
    )
    return first, second, kept


def _csr(
    rows: npt.NDArray[np.int64],
    cols: npt.NDArray[np.int64],
    values: npt.NDArray[np.float32],
    shape: tuple[int, int],
) -> sp.csr_matrix:
    """Build a canonical CSR (sorted, no duplicates: checked before) without scipy's COO pass."""
    order = np.lexsort((cols, rows))
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])
    index_dtype = np.int32 if max(shape[1], rows.size) < 2**31 else np.int64
    matrix = sp.csr_matrix(
        (values[order], cols[order].astype(index_dtype), indptr.astype(index_dtype)), shape=shape
    )
    matrix.has_canonical_format = True
    return matrix


def _variants(path: Path) -> list[Path]:
    """The names tried for ``path``: itself, then with ``.gz`` added or removed."""
    if path.suffix == ".gz":
        return [path, path.with_suffix("")]
    return [path, path.with_name(path.name + ".gz")]


def _nested(base: Path, neurons: int, name: str) -> list[Path]:
    """The same file inside ``neuron{N}/``, the folder name of the official archive."""
    folder = base / f"neuron{neurons}"
    return [folder / name, folder / f"{name}.gz"]


def _find(candidates: Sequence[Path]) -> Path:
    """Return the first existing candidate, or raise InputError listing all names tried."""
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise InputError(f"{candidates[0]}: file not found (tried {tried})")


def _read(path: Path) -> bytes:
    """Return the file's bytes, gunzipped if they start with the gzip magic number."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: corrupt gzip data: {exc}") from exc


def _token_lines(text: bytes) -> npt.NDArray[np.int64]:
    """Return the 0-based line of every token of ``text.split()``, in the same order.

    Vectorised over the bytes (token starts, newline positions, one searchsorted): no per-line
    Python loop, so it costs a few milliseconds per official layer.
    """
    data = np.frombuffer(text, dtype=np.uint8)
    space = _WHITESPACE[data]
    begins = ~space
    begins[1:] &= space[:-1]
    positions = np.flatnonzero(begins)
    newlines = np.flatnonzero(data == ord("\n"))
    return np.searchsorted(newlines, positions).astype(np.int64)


def _check_fields(path: Path, line_of: npt.NDArray[np.int64], want: int, names: str) -> None:
    """Raise InputError at the first non-blank line that does not have ``want`` fields."""
    if line_of.size == 0:
        return
    per_line = np.bincount(line_of)
    bad = (per_line != 0) & (per_line != want)
    if bad.any():
        line = int(np.argmax(bad))
        found = int(per_line[line])
        plural = "s" if want != 1 else ""
        raise _error(path, line + 1, f"expected {want} field{plural} ({names}), found {found}")


def _scan_numbers(
    path: Path,
    tokens: Sequence[bytes],
    line_of: npt.NDArray[np.int64],
    integers: Sequence[str],
    reals: Sequence[str],
) -> NoReturn:
    """Slow path: find the first token numpy could not convert and raise InputError for it.

    numpy converts bytes with Python's own ``int``/``float``, so the same calls find the token.
    """
    names = [*integers, *reals]
    for at, token in enumerate(tokens):
        column = at % len(names)
        name = names[column]
        line = int(line_of[at]) + 1
        if column < len(integers):
            try:
                number = int(token)
            except ValueError:
                raise _error(
                    path, line, f"bad {name} {_token(token)}: expected an integer"
                ) from None
            if not -(2**63) <= number < 2**63:
                raise _error(path, line, f"bad {name} {_token(token)}: integer too large")
        else:
            try:
                float(token)
            except ValueError:
                raise _error(path, line, f"bad {name} {_token(token)}: expected a number") from None
    raise InputError(f"{path}: numbers numpy cannot convert")  # pragma: no cover - see above


def _check_range(
    path: Path,
    name: str,
    indices: npt.NDArray[np.int64],
    lines: npt.NDArray[np.int64],
    limit: int | None,
    why: str = "",
) -> None:
    """Raise InputError at the first 1-based index outside ``1..limit`` (``limit`` None: >= 1);
    ``why`` is added when the index is above the limit."""
    bad = indices < 1
    if limit is not None:
        bad |= indices > limit
    if bad.any():
        at = int(np.argmax(bad))
        allowed = f"1..{limit}" if limit is not None else ">= 1"
        reason = why if limit is not None and indices[at] > limit else ""
        raise _error(path, int(lines[at]),
                     f"{name} {indices[at]} out of range {allowed}{reason}")


def _check_duplicates(
    path: Path,
    keys: npt.NDArray[np.int64],
    lines: npt.NDArray[np.int64],
    describe: Callable[[int], str],
) -> None:
    """Raise InputError at the second occurrence of a repeated key, naming the first line."""
    if keys.size < 2:
        return
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    repeat = np.flatnonzero(ordered[1:] == ordered[:-1])
    if repeat.size:
        second = order[repeat + 1]
        pick = int(np.argmin(lines[second]))
        later = int(second[pick])
        earlier = int(order[repeat[pick]])
        raise _error(
            path,
            int(lines[later]),
            f"duplicate entry ({describe(int(keys[later]))}), first given on line "
            f"{int(lines[earlier])}",
        )


def _check_positive(name: str, value: object, *, allow_zero: bool = False,
                    high: int | None = None) -> None:
    """Reject a non-integer, a too small or a too large size argument with InputError."""
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    if high is not None and value > high:
        raise InputError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def _token(token: bytes) -> str:
    """Quote a token for a message, shortened and decoded whatever its bytes."""
    text = token.decode("utf-8", "replace")
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _error(path: Path, line: int, reason: str) -> InputError:
    """Build the ``path:line: reason`` InputError every malformed input raises."""
    return InputError(f"{path}:{line}: {reason}")
