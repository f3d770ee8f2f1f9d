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
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from fsdgraph.errors import InputError

__all__ = ["synthetic_images"]

#: Strokes per image (inclusive range).
STROKES = (1, 4)
#: Stroke radius in pixels of a 32 x 32 grid (uniform); scaled by side / 32.
RADIUS = (0.6, 2.0)
#: Stroke control points lie in this square of a 32 x 32 grid (MNIST digits sit centred too).
BOX = (5.0, 27.0)


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
