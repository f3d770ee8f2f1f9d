"""Synthetic input images for RadiX-Net inference, shaped like the official MNIST-derived ones.

Why not random pixels: the first RadiX-Net layer adds up, per output, the pixels whose id is
``c`` or ``c - 1`` modulo ``n = neurons / 16`` (for 32 x 32 images: two adjacent image columns,
every other row), divided by 16; the Graph Challenge bias kills a row whose sums stay small.
Scattered random pixels die within 2-3 layers; handwriting survives because of thick strokes.
So each image here is 1-4 quadratic Bezier strokes of random thickness drawn inside the central
box of a ``side x side`` grid (pixel id ``y * side + x``, row-major like the official files),
value 1.0 like the official binary images.

Measured with ``radixnet(neurons, L, seed=0)``, the Graph Challenge bias and images seed 1
(other seeds within a few points), fraction of rows alive after layer:

========  ======  ======= ======== ======== =========
neurons   images  layer 3 layer 10 layer 30 layer 120
========  ======  ======= ======== ======== =========
1024      1000    58%     10.7%    10.5%    10.5%
4096      500     55%     9.0%     8.4%     8.4%
16384     200     50%     10%      8%       8%
65536     50      36%     6%       4%       (L = 36)
========  ======  ======= ======== ======== =========

The official 1200 images give 91% after layer 1, 35% after 3, 1.8% after 10, 1.6% from 30 on:
in both, most rows die in the first block and the survivors stay dense to the end.

Parameters are in units of a 32 x 32 grid and scale with ``side / 32``.

>>> images = synthetic_images(1024, 3, seed=5)
>>> images.shape, images.dtype, set(images.data.tolist())
((3, 1024), dtype('float32'), {1.0})

Distinct images from official ones
----------------------------------

A benchmark on more images than the 1200 shipped official ones used to tile them; tiled rows are
copies, so :func:`distinct_images` makes new ones instead: the official images first, unchanged,
then rounds of variants, one per official image and round, each the image moved by a random
``(dy, dx)`` of at most ``shift`` pixels (never pushing ink off the grid) with its outline
jittered (``jitter`` ink pixels on the stroke boundary removed, as many background pixels next
to a stroke inked, so the ink stays the same).

Why this keeps the live-row curve: the first RadiX-Net block sees an image only through its ink
per pixel id modulo ``neurons / 16`` (for 32 x 32: per column and row parity); a shift rotates
that histogram and the base layers commute with the rotation, and the rows that survive the
block are saturated, so the permuted later blocks do not tell them apart either. Measured on
the official network: 1200 shifted copies of the official images (``jitter=0``) keep the same
number of rows after every layer to within 2 rows (a different summation order rounds a
near-threshold sum the other way) and end in the same 19 categories. Distinct images, then, do
not by themselves keep more rows alive than tiled ones; what does is the images' ink.
``thicken`` inks that many more background pixels next to the strokes of every variant (a
wider pen) and raises the whole curve; :data:`THICKER` doubles the rows alive through the dense
layers, as reported for 10 000 distinct official images against the first 1200 tiled (a
measurement this module cannot repeat: only the first 1200 official images ship).

Fraction of rows alive after a layer of the official 1024-neuron network (bias -0.3, cap 32;
:func:`live_row_curve`); generated: 10 000 from the first 1200 official images, seed 0
(seeds 0-3 differ from it by less than 0.007 anywhere):

=====================  =====  =====  =====  =====  =====  =====  =====  ======  ======  ======
images                 1      2      3      4      5      6      8      10      30      120
=====================  =====  =====  =====  =====  =====  =====  =====  ======  ======  ======
official, first 1200   0.915  0.655  0.346  0.163  0.082  0.047  0.018  0.0175  0.0158  0.0158
tiled to 10 000        0.915  0.655  0.346  0.163  0.082  0.047  0.018  0.0172  0.0155  0.0155
generated              0.925  0.659  0.346  0.165  0.082  0.045  0.018  0.0167  0.0154  0.0154
generated, thicken 21  0.966  0.779  0.492  0.265  0.153  0.090  0.040  0.0333  0.0314  0.0314
=====================  =====  =====  =====  =====  =====  =====  =====  ======  ======  ======

(Tiling 1200 to 10 000 repeats the first 400 images once more than the rest, hence its 0.0155.)
Generating 10 000 takes about 0.5 s.

>>> base = synthetic_images(1024, 4, seed=5)
>>> more = distinct_images(base, 10, seed=1)
>>> more.shape, (more[:4] != base).nnz, len({more[i].indices.tobytes() for i in range(10)})
((10, 1024), 0, 10)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from fsdgraph.errors import InputError

if TYPE_CHECKING:
    from fsdgraph.graph import Layer
    from fsdgraph.kernels import Kernel

__all__ = ["THICKER", "distinct_images", "live_row_curve", "synthetic_images"]

#: Strokes per image (inclusive range).
STROKES = (1, 4)
#: Stroke radius in pixels of a 32 x 32 grid (uniform); scaled by side / 32.
RADIUS = (0.6, 2.0)
#: Stroke control points lie in this square of a 32 x 32 grid (MNIST digits sit centred too).
BOX = (5.0, 27.0)
#: :func:`distinct_images` defaults: the largest move, and the outline pixels moved, per variant.
SHIFT = 2
JITTER = 2
#: ``thicken`` that doubles the rows alive through the dense layers of the official network
#: (0.031 of 10 000 against 0.0155; see the module docstring).
THICKER = 21
#: Draws of a variant that keeps coming out equal to an earlier image before it is given up.
DRAW_ATTEMPTS = 8


def synthetic_images(neurons: int, count: int, seed: int = 0) -> sp.csr_matrix:
    """Return ``count`` stroke images as a (count x neurons) float32 CSR with values 1.0.

    ``neurons`` must be a perfect square (the grid side is its square root). Images are drawn in
    order from ``numpy.random.default_rng(seed)``, so the first k images do not depend on
    ``count``.
    """
    side = _side(neurons)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise InputError(f"count must be an integer >= 0, got {count!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be an integer >= 0, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    pixels = [_draw(rng, side) for _ in range(int(count))]
    indptr = np.zeros(int(count) + 1, dtype=np.int64)
    np.cumsum([p.size for p in pixels], out=indptr[1:])
    indices = np.concatenate(pixels) if pixels else np.zeros(0, dtype=np.int64)
    data = np.ones(indices.size, dtype=np.float32)
    images = sp.csr_matrix(
        (data, indices.astype(np.int32), indptr.astype(np.int32)), shape=(int(count), neurons)
    )
    images.has_sorted_indices = True
    return images


def _side(neurons: int) -> int:
    """Return the grid side of ``neurons`` pixels, or raise InputError if it is not a square."""
    if isinstance(neurons, bool) or not isinstance(neurons, (int, np.integer)) or neurons < 1:
        raise InputError(f"neurons must be a positive integer, got {neurons!r}")
    side = math.isqrt(int(neurons))
    if side * side != neurons:
        raise InputError(
            f"neurons must be a perfect square (a side x side image, e.g. 1024 = 32 x 32, "
            f"4096 = 64 x 64), got {neurons}"
        )
    return side


def _draw(rng: np.random.Generator, side: int) -> npt.NDArray[np.int64]:
    """Draw one image: the sorted unique pixel ids covered by a few thick Bezier strokes."""
    scale = side / 32.0
    strokes = int(rng.integers(STROKES[0], STROKES[1] + 1))
    covered = []
    for _ in range(strokes):
        ends = rng.uniform(BOX[0], BOX[1], size=(3, 2)) * scale  # start, control, end (y, x)
        radius = float(rng.uniform(*RADIUS)) * scale
        covered.append(_stroke(ends, radius, side))
    return np.unique(np.concatenate(covered))


def _stroke(ends: npt.NDArray[np.float64], radius: float, side: int) -> npt.NDArray[np.int64]:
    """Return the pixel ids within ``radius`` of a quadratic Bezier curve (stamped disks)."""
    length = float(np.linalg.norm(ends[1] - ends[0]) + np.linalg.norm(ends[2] - ends[1]))
    step = max(0.5, radius / 2)  # stamps overlap, so the stroke has no gaps
    t = np.linspace(0.0, 1.0, max(2, math.ceil(length / step) + 1))[:, None]
    points = (1 - t) ** 2 * ends[0] + 2 * (1 - t) * t * ends[1] + t**2 * ends[2]
    reach = math.ceil(radius)
    offsets = np.arange(-reach, reach + 1)
    dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
    disk = dy**2 + dx**2 <= radius * radius
    disk_yx = np.stack([dy[disk], dx[disk]], axis=1)
    cells = (np.floor(points).astype(np.int64)[:, None, :] + disk_yx[None]).reshape(-1, 2)
    cells = cells[((cells >= 0) & (cells < side)).all(axis=1)]
    return np.asarray(cells[:, 0] * side + cells[:, 1], dtype=np.int64)


def distinct_images(images: sp.spmatrix, count: int, seed: int = 0, *, shift: int = SHIFT,
                    jitter: int = JITTER, thicken: int = 0) -> sp.csr_matrix:
    """Return ``count`` distinct binary images made from ``images`` (see the module docstring).

    ``images`` is an (n x side * side) matrix whose nonzeros are ink (the official files: value
    1). The result, a (count x side * side) float32 CSR with values 1.0, starts with ``images``
    themselves (so their official categories still apply to the first rows), then holds
    rounds of variants of every non-empty image in order, round ``r`` drawn from
    ``numpy.random.default_rng((seed, r))``: the first k rows do not depend on ``count``. A
    variant equal to an earlier row is drawn again (``DRAW_ATTEMPTS`` times), then skipped.
    Raises InputError when ``images`` cannot give ``count`` distinct ones (e.g. a round adds
    none).
    """
    csr = sp.csr_matrix(images)
    side = _side(int(csr.shape[1]))
    for name, value in (("count", count), ("seed", seed), ("shift", shift), ("jitter", jitter),
                        ("thicken", thicken)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise InputError(f"{name} must be an integer >= 0, got {value!r}")
    ink = np.zeros(csr.shape, dtype=bool)
    coo = csr.tocoo()
    ink[coo.row, coo.col] = coo.data != 0
    grids = ink.reshape(-1, side, side)
    rows: list[npt.NDArray[np.bool_]] = list(ink[: int(count)])
    seen = {row.tobytes() for row in rows}
    bases = np.flatnonzero(ink.any(axis=1))  # an empty image has nothing to move
    round_ = 0
    while len(rows) < count:
        round_ += 1
        made = _variant_round(grids[bases], seen, (int(seed), round_), int(shift), int(jitter),
                              int(thicken))
        if not made:
            raise InputError(f"cannot make {count} distinct images from {csr.shape[0]} "
                             f"(round {round_} gave no new one; {len(rows)} so far)")
        rows.extend(made[: int(count) - len(rows)])
    return _binary_csr(rows, side * side)


def _variant_round(grids: npt.NDArray[np.bool_], seen: set[bytes], key: tuple[int, int],
                   shift: int, jitter: int, thicken: int) -> list[npt.NDArray[np.bool_]]:
    """One variant of every grid, in order, each new to ``seen`` (which gets them); a grid
    whose every attempt repeats an earlier image gives none."""
    made: dict[int, npt.NDArray[np.bool_]] = {}
    todo = np.arange(len(grids))
    for attempt in range(DRAW_ATTEMPTS):
        if not todo.size:
            break
        rng = np.random.default_rng(key if attempt == 0 else (*key, attempt))
        drawn = _vary(grids[todo], rng, shift, jitter, thicken).reshape(len(todo), -1)
        again = []
        for i, flat in zip(todo.tolist(), drawn, strict=True):
            data = flat.tobytes()
            if data in seen:
                again.append(i)
            else:
                seen.add(data)
                made[i] = flat
        todo = np.asarray(again, dtype=np.int64)
    return [made[i] for i in sorted(made)]


def _vary(grids: npt.NDArray[np.bool_], rng: np.random.Generator, shift: int, jitter: int,
          thicken: int) -> npt.NDArray[np.bool_]:
    """Each grid moved by a random shift that keeps its ink on the grid, then its outline
    jittered and thickened; vectorised over the grids."""
    n, side, _ = grids.shape
    lines, columns = np.asarray(grids.any(axis=2)), np.asarray(grids.any(axis=1))
    top, left = lines.argmax(axis=1), columns.argmax(axis=1)
    bottom = side - 1 - lines[:, ::-1].argmax(axis=1)
    right = side - 1 - columns[:, ::-1].argmax(axis=1)
    dy = _uniform(rng, np.maximum(-shift, -top), np.minimum(shift, side - 1 - bottom))
    dx = _uniform(rng, np.maximum(-shift, -left), np.minimum(shift, side - 1 - right))
    image, y, x = np.nonzero(grids)
    moved = np.zeros_like(grids)
    moved[image, y + dy[image], x + dx[image]] = True
    outline, beside = _edges(moved)
    flat = moved.reshape(n, -1)
    flat[_pick(outline.reshape(n, -1), jitter, rng)] = False
    flat[_pick(beside.reshape(n, -1), jitter + thicken, rng)] = True
    return moved


def _uniform(rng: np.random.Generator, low: npt.NDArray[np.int64],
             high: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """One integer per entry, uniform in ``[low, high]``."""
    return low + (rng.random(low.shape) * (high - low + 1)).astype(np.int64)


def _edges(grids: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Ink pixels with a background 4-neighbour (or the border), and background pixels with an
    ink 4-neighbour."""
    pad = np.pad(grids, ((0, 0), (1, 1), (1, 1)))
    up, down, west, east = pad[:, :-2, 1:-1], pad[:, 2:, 1:-1], pad[:, 1:-1, :-2], pad[:, 1:-1, 2:]
    outline = grids & ~(up & down & west & east)
    beside = ~grids & (up | down | west | east)
    return outline, beside


def _pick(candidates: npt.NDArray[np.bool_], k: int,
          rng: np.random.Generator) -> npt.NDArray[np.bool_]:
    """Up to ``k`` of each row's candidates, uniformly without replacement (all if fewer)."""
    chosen = np.zeros_like(candidates)
    if k == 0 or candidates.size == 0:
        return chosen
    keys = rng.random(candidates.shape)
    keys[~candidates] = 2.0  # never among the k smallest while a candidate is left
    k = min(k, candidates.shape[1])
    np.put_along_axis(chosen, np.argpartition(keys, k - 1, axis=1)[:, :k], True, axis=1)
    return chosen & candidates


def _binary_csr(rows: Sequence[npt.NDArray[np.bool_]], width: int) -> sp.csr_matrix:
    """Boolean rows as a float32 CSR with values 1.0 and sorted column ids."""
    dense = np.array(rows, dtype=bool).reshape(len(rows), width)
    image, pixel = np.nonzero(dense)
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(np.bincount(image, minlength=len(rows)), out=indptr[1:])
    csr = sp.csr_matrix((np.ones(pixel.size, dtype=np.float32), pixel.astype(np.int32), indptr),
                        shape=(len(rows), width))
    csr.has_sorted_indices = True
    return csr


def live_row_curve(images: sp.spmatrix, layers: Sequence[Layer],
                   kernel: Kernel | None = None) -> npt.NDArray[np.float64]:
    """The fraction of ``images``' rows with a nonzero activation after each of ``layers``.

    Runs the layers serially with the layer kernel (default: ``kernel_from_env()``, the
    compiled one when numba is installed: a tenth of a second for 1200 official images).
    """
    from fsdgraph.kernels.layer import serial_layers

    batch = int(images.shape[0])
    alive = np.zeros(len(layers), dtype=np.float64)
    for l, block in enumerate(serial_layers(images, layers, kernel)):
        alive[l] = len(block.rows) / batch if batch else 0.0
    return alive
