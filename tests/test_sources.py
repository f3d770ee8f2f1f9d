"""Tests of fsdgraph.sources: official-file loaders, the RadiX-Net generator, synthetic images.

The official-data tests pin the facts the generator is built on: layers 1-6 are the base layers
exactly, later blocks are one row permutation of them each, and the 120-layer serial inference
of the 1200 shipped images gives the 19 truth categories (with the official weights and with
generated ones). Images generated from the official ones keep their live-row curve.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import scipy.sparse as sp

import fsdgraph
from fsdgraph.errors import InputError
from fsdgraph.kernels import serial_inference
from fsdgraph.sources.graphchallenge import (
    graphchallenge_bias,
    load_images,
    load_truth,
    load_weights,
)
from fsdgraph.sources.images import (
    THICKER,
    distinct_images,
    live_row_curve,
    synthetic_images,
)
from fsdgraph.sources.radixnet import block_permutation, radixnet, radixnet_layer

IMAGES = "sparse-images-1024-first1200.tsv.gz"
TRUTH = "neuron1024-l120-categories-first1200.tsv"


def serial(
    weights: list[sp.csr_matrix], images: sp.csr_matrix, bias: float
) -> tuple[sp.csr_matrix, list[int]]:
    """Plain Graph Challenge inference; also returns the number of live rows after each layer."""
    y = images.tocsr()
    alive = []
    for w in weights:
        y = (y @ w).tocsr()
        y.data += np.float32(bias)  # only where Y @ W is structurally nonzero
        np.clip(y.data, 0, 32, out=y.data)
        y.eliminate_zeros()
        alive.append(int(np.count_nonzero(np.diff(y.indptr))))
    return y, alive


def categories(y: sp.csr_matrix) -> npt.NDArray[np.int64]:
    """Rows with any nonzero, 0-based."""
    return np.flatnonzero(np.diff(y.indptr)).astype(np.int64)


def base_layer(neurons: int, k: int) -> sp.csr_matrix:
    """B_k straight from the DESIGN.md formula, with S[(j + 1) % n, j] = 1."""
    n = neurons // 16
    j = np.arange(n)
    shift = sp.csr_matrix((np.ones(n), ((j + 2 ** (k - 1)) % n, j)), shape=(n, n))
    core = sp.identity(n, format="csr") + shift
    return sp.csr_matrix(sp.kron(np.ones((16, 16)), core) / 16, dtype=np.float32)


def same(a: sp.csr_matrix, b: sp.csr_matrix) -> bool:
    """Same shape, sparsity pattern and values (exactly)."""
    a, b = a.tocsr(), b.tocsr()
    a.sort_indices()
    b.sort_indices()
    return (
        a.shape == b.shape
        and np.array_equal(a.indptr, b.indptr)
        and np.array_equal(a.indices, b.indices)
        and np.array_equal(a.data, b.data)
    )


@pytest.fixture(scope="module")
def official_weights(official_data: Path) -> list[sp.csr_matrix]:
    """The 120 official layers (about 2.5 s to load)."""
    return load_weights(official_data / "neuron1024", 1024, 120)


@pytest.fixture(scope="module")
def official_images(official_data: Path) -> sp.csr_matrix:
    """The 1200 shipped images."""
    return load_images(official_data / IMAGES, 1024)


# --- official data -------------------------------------------------------------------------


@pytest.mark.official
def test_official_files_load(official_data: Path, official_weights: list[sp.csr_matrix]) -> None:
    assert len(official_weights) == 120
    for w in official_weights:
        assert w.shape == (1024, 1024) and w.dtype == np.float32 and w.nnz == 32 * 1024
    images = load_images(official_data / IMAGES, 1024)
    assert images.shape == (1200, 1024) and images.dtype == np.float32
    assert images.nnz == 122713 and set(images.data.tolist()) == {1.0}
    truth = load_truth(official_data / TRUTH)
    assert truth.dtype == np.int64 and truth.size == 19
    assert truth[0] == 286 and np.all(np.diff(truth) > 0)
    # the archive's folder layout is accepted too (files inside neuron1024/)
    assert same(load_weights(official_data, 1024, 1)[0], official_weights[0])


@pytest.mark.official
def test_official_layers_1_to_6_equal_radixnet(official_weights: list[sp.csr_matrix]) -> None:
    generated = radixnet(1024, 6)
    for k in range(6):
        assert same(official_weights[k], generated[k]), f"layer {k + 1}"
        assert same(official_weights[k], base_layer(1024, k + 1)), f"layer {k + 1}"


@pytest.mark.official
def test_official_later_blocks_are_row_permuted_base_layers(
    official_weights: list[sp.csr_matrix],
) -> None:
    """Layers 6b+1..6b+6 are P_b @ B_k with one row permutation P_b per block; not P B P^T."""
    bases = [base_layer(1024, k) for k in range(1, 7)]
    first_core_rows = bases[0][:64].toarray() != 0  # B_1 rows differ only by core index
    for block in (1, 2, 19):
        w = official_weights[6 * block].toarray() != 0
        matches = (w[:, None, :] == first_core_rows[None, :, :]).all(axis=2)
        assert (matches.sum(axis=1) == 1).all()
        core_of_row = matches.argmax(axis=1)
        assert (np.bincount(core_of_row, minlength=64) == 16).all()
        # one permutation: row r of every layer of the block is row perm[r] of B_k
        rank = np.zeros(1024, dtype=np.int64)
        for core in range(64):
            rows = np.flatnonzero(core_of_row == core)
            rank[rows] = core + 64 * np.arange(rows.size)
        for k in range(6):
            assert same(official_weights[6 * block + k], bases[k][rank]), (block, k)
        # columns are not permuted: they keep the j mod 64 structure of B_k
        cols = official_weights[6 * block].T.toarray() != 0
        assert (cols[:64][np.arange(1024) % 64] == cols).all()


@pytest.mark.official
def test_official_inference_gives_truth(
    official_data: Path, official_weights: list[sp.csr_matrix], official_images: sp.csr_matrix
) -> None:
    y, alive = serial(official_weights, official_images, graphchallenge_bias(1024))
    truth = load_truth(official_data / TRUTH)
    assert np.array_equal(categories(y), truth)
    assert alive[0] == 1098 and alive[9] == 21 and alive[29] == 19
    assert np.all(y[truth].toarray() == 32)


@pytest.mark.official
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_radixnet_reproduces_official_categories(
    official_data: Path, official_images: sp.csr_matrix, seed: int
) -> None:
    y, _ = serial(radixnet(1024, 120, seed), official_images, -0.3)
    assert np.array_equal(categories(y), load_truth(official_data / TRUTH))


# --- RadiX-Net generator -------------------------------------------------------------------


def test_radixnet_4096_structure() -> None:
    layers = radixnet(4096, 12, seed=3)
    assert len(layers) == 12
    for w in layers:
        assert w.dtype == np.float32 and w.shape == (4096, 4096)
        assert (np.diff(w.indptr) == 32).all()
        assert (np.bincount(w.indices, minlength=4096) == 32).all()
        assert (w.data == np.float32(0.0625)).all()
    for k in range(1, 9):  # block 0: the base layers themselves
        assert same(layers[k - 1], base_layer(4096, k))
    perm = block_permutation(4096, 1, seed=3)
    assert not np.array_equal(perm, np.arange(4096))
    for k in range(1, 5):  # block 1 (layers 9-12): one row permutation shared by the block
        assert same(layers[8 + k - 1], base_layer(4096, k)[perm])


def test_radixnet_seeds_and_random_access() -> None:
    a, b, c = radixnet(64, 6, seed=5), radixnet(64, 6, seed=5), radixnet(64, 6, seed=6)
    assert all(same(x, y) for x, y in zip(a, b, strict=True))
    assert same(a[1], c[1])  # block 0 (layers 1-2) does not depend on the seed
    assert not same(a[2], c[2])
    assert same(radixnet_layer(64, 5, seed=5), a[4])


@pytest.mark.parametrize(
    ("neurons", "layers", "seed"), [(1000, 4, 0), (16, 4, 0), (48, 4, 0), (64, 0, 0), (64, 2, -1)]
)
def test_radixnet_rejects_bad_arguments(neurons: int, layers: int, seed: int) -> None:
    with pytest.raises(InputError, match="must be"):
        radixnet(neurons, layers, seed)


# --- loaders: round trip and malformed files -----------------------------------------------


def write_tsv(path: Path, matrix: sp.csr_matrix) -> None:
    """Write ``matrix`` in the official 1-based ``row<TAB>col<TAB>value`` format."""
    coo = matrix.tocoo()
    lines = "".join(
        f"{r + 1}\t{c + 1}\t{v:.6e}\n" for r, c, v in zip(coo.row, coo.col, coo.data, strict=True)
    )
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(lines.encode()))
    else:
        path.write_text(lines)


def test_load_weights_round_trip_plain_and_gz(tmp_path: Path) -> None:
    layers = radixnet(64, 3, seed=1)
    for k, w in enumerate(layers, start=1):
        write_tsv(tmp_path / (f"n64-l{k}.tsv" + (".gz" if k % 2 else "")), w)
    loaded = load_weights(tmp_path, 64, 3)
    assert all(same(x, y) for x, y in zip(loaded, layers, strict=True))
    assert all(w.dtype == np.float32 and w.has_canonical_format for w in loaded)


def test_load_images_and_truth(tmp_path: Path) -> None:
    (tmp_path / "img.tsv").write_text("1\t2\t1\n3\t4\t0.5\n")
    images = load_images(tmp_path / "img.tsv", 4)
    assert images.shape == (3, 4) and images.dtype == np.float32
    assert images.toarray().tolist() == [[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0.5]]
    assert load_images(tmp_path / "img.tsv.gz", 4, count=5).shape == (5, 4)  # .gz tried, then plain
    (tmp_path / "truth.tsv").write_text("7\n2\n")
    assert load_truth(tmp_path / "truth.tsv").tolist() == [1, 6]
    (tmp_path / "empty.tsv").write_text("")
    assert load_truth(tmp_path / "empty.tsv").size == 0


BAD_WEIGHTS = [
    ("1\t1\t1\n2\t3\n", 2, "expected 3 fields (row, col, value), found 2"),
    ("1\t1\t1\n2 3 1 4\n", 2, "expected 3 fields (row, col, value), found 4"),
    ("1\t1\t1\n\n2\tx\t1\n", 3, "bad col 'x': expected an integer"),
    ("1\t1\t1\n2.0\t1\t1\n", 2, "bad row '2.0': expected an integer"),
    ("1\t1\t1\n2\t2\t1,5\n", 2, "bad value '1,5': expected a number"),
    ("1\t1\t1\n2\t5\t1\n", 2, "col 5 out of range 1..4"),
    ("1\t1\t1\n0\t2\t1\n", 2, "row 0 out of range 1..4"),
    ("1\t1\t1\n2\t2\tnan\n", 2, "value 'nan' is not finite"),
    ("1\t1\t1\n2\t2\t-inf\n", 2, "value '-inf' is not finite"),
    ("1\t1\t1\n2\t2\t1e39\n", 2, "value '1e39' overflows float32"),
    ("1\t1\t1\n2\t2\t1\n1\t1\t2\n", 3, "duplicate entry (row 1, col 1), first given on line 1"),
]


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize(("text", "line", "reason"), BAD_WEIGHTS)
def test_malformed_weights(tmp_path: Path, text: str, line: int, reason: str, gz: bool) -> None:
    path = tmp_path / ("n4-l1.tsv.gz" if gz else "n4-l1.tsv")
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    with pytest.raises(InputError) as info:
        load_weights(tmp_path, 4, 1)
    assert str(info.value) == f"{path}:{line}: {reason}"


def test_malformed_images_and_truth(tmp_path: Path) -> None:
    images = tmp_path / "img.tsv.gz"
    images.write_bytes(gzip.compress(b"1 1 1\n3 4 1\n"))
    with pytest.raises(InputError, match=r"img\.tsv\.gz:2: image 3 out of range 1\.\.2$"):
        load_images(images, 4, count=2)
    with pytest.raises(InputError, match=r"img\.tsv\.gz:2: pixel 4 out of range 1\.\.3$"):
        load_images(images, 3)
    truth = tmp_path / "truth.tsv"
    for text, reason in [
        ("3\n1 2\n", "expected 1 field (image id), found 2"),
        ("3\nx\n", "bad image id 'x': expected an integer"),
        ("3\n0\n", "image id 0 out of range >= 1"),
        ("3\n3\n", "duplicate entry (image id 3), first given on line 1"),
    ]:
        truth.write_text(text)
        with pytest.raises(InputError) as info:
            load_truth(truth)
        assert str(info.value) == f"{truth}:2: {reason}"


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    (tmp_path / "n4-l1.tsv").write_text("1 1 1\n")
    with pytest.raises(InputError) as info:
        load_weights(tmp_path, 4, 2)
    message = str(info.value)
    assert "file not found" in message
    assert str(tmp_path / "n4-l2.tsv") in message and str(tmp_path / "n4-l2.tsv.gz") in message
    (tmp_path / "n4-l2.tsv.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(InputError, match=r"n4-l2\.tsv\.gz: corrupt gzip data"):
        load_weights(tmp_path, 4, 2)
    with pytest.raises(InputError, match=r"tried .*nope\.tsv, .*nope\.tsv\.gz\)"):
        load_truth(tmp_path / "nope.tsv")


def test_graphchallenge_bias() -> None:
    assert [graphchallenge_bias(n) for n in (1024, 4096, 16384, 65536)] == [
        -0.30,
        -0.35,
        -0.40,
        -0.45,
    ]
    with pytest.raises(InputError, match=r"2048.*1024 \(-0\.3\), 4096 .*65536 \(-0\.45\)"):
        graphchallenge_bias(2048)


# --- synthetic images ----------------------------------------------------------------------


def test_synthetic_images_shape_and_determinism() -> None:
    images = synthetic_images(1024, 50, seed=4)
    assert images.shape == (50, 1024) and images.dtype == np.float32
    assert set(images.data.tolist()) == {1.0}
    assert same(images, synthetic_images(1024, 50, seed=4))
    # the first images do not depend on count
    assert same(images[:20], synthetic_images(1024, 20, seed=4))
    assert not same(images, synthetic_images(1024, 50, seed=5))
    assert 40 < images.nnz / 50 < 300  # digit-like ink, MNIST-32 has about 100 pixels
    assert synthetic_images(4096, 2, seed=0).shape == (2, 4096)
    with pytest.raises(InputError, match="perfect square"):
        synthetic_images(1000, 3)


def test_synthetic_images_survive_like_digits() -> None:
    """A good fraction stays alive through the layers while the rest die at various depths."""
    weights = radixnet(1024, 30, seed=0)
    bias = graphchallenge_bias(1024)
    _, alive = serial(weights, synthetic_images(1024, 400, seed=1), bias)
    fraction = np.array(alive) / 400
    assert 0.03 <= fraction[29] <= 0.30
    assert fraction[0] > fraction[2] > fraction[5] > fraction[29]  # deaths spread over depth
    _, again = serial(weights, synthetic_images(1024, 400, seed=1), bias)
    assert again == alive
    # scattered pixels with as much ink die within a few layers: strokes are what keeps rows alive
    rng = np.random.default_rng(0)
    scattered = sp.csr_matrix(
        (rng.random((400, 1024)) < 100 / 1024).astype(np.float32), dtype=np.float32
    )
    _, scattered_alive = serial(weights[:6], scattered, bias)
    assert scattered_alive[-1] == 0


# --- distinct images from official ones ----------------------------------------------------


def rows_as_bytes(images: sp.csr_matrix) -> list[bytes]:
    """Each row's pixel ids, as bytes (equal rows, equal bytes: the indices are sorted)."""
    return [images.indices[a:b].tobytes() for a, b in zip(images.indptr, images.indptr[1:],
                                                            strict=False)]


def test_distinct_images_are_distinct_binary_and_deterministic() -> None:
    base = synthetic_images(1024, 30, seed=3)
    images = distinct_images(base, 200, seed=2)
    assert images.shape == (200, 1024) and images.dtype == np.float32
    assert set(images.data.tolist()) == {1.0} and images.has_sorted_indices
    assert same(images[:30], base)  # the originals come first, unchanged
    assert len(set(rows_as_bytes(images))) == 200
    assert same(images, distinct_images(base, 200, seed=2))
    assert same(images[:75], distinct_images(base, 75, seed=2))  # the first rows ignore count
    assert not same(images[30:], distinct_images(base, 200, seed=3)[30:])
    # a variant of image i keeps its ink (a move, and as many pixels added as removed)
    ink = np.diff(images.indptr)
    assert np.array_equal(ink, np.tile(np.diff(base.indptr), 7)[:200])
    thick = distinct_images(base, 60, seed=2, thicken=5)
    assert np.array_equal(np.diff(thick.indptr)[30:], np.diff(base.indptr) + 5)
    assert distinct_images(synthetic_images(4096, 2, seed=0), 5).shape == (5, 4096)


def test_distinct_images_moves_stay_within_shift() -> None:
    """Without jitter a variant is its original moved by at most ``shift`` pixels each way."""
    base = synthetic_images(1024, 10, seed=8)
    images = distinct_images(base, 40, seed=1, jitter=0, shift=1)
    for k in range(10, 40):
        original = base[k % 10].indices
        moved = images[k].indices
        delta = (moved // 32 - original // 32)[0], (moved % 32 - original % 32)[0]
        assert max(abs(delta[0]), abs(delta[1])) <= 1 and delta != (0, 0)
        assert np.array_equal(moved, original + 32 * delta[0] + delta[1])


def test_distinct_images_rejects_what_it_cannot_make() -> None:
    base = synthetic_images(1024, 3, seed=0)
    for name, value in (("count", -1), ("seed", -2), ("shift", 1.5), ("thicken", True)):
        with pytest.raises(InputError, match=f"{name} must be an integer >= 0"):
            distinct_images(base, **{"count": 5, name: value})  # type: ignore[arg-type]
    with pytest.raises(InputError, match="perfect square"):
        distinct_images(sp.csr_matrix((2, 1000), dtype=np.float32), 3)
    with pytest.raises(InputError, match="cannot make 5 distinct images from 2"):
        distinct_images(sp.csr_matrix((2, 1024), dtype=np.float32), 5)  # no ink to move
    dot = sp.csr_matrix(([1.0], ([0], [16 * 32 + 16])), shape=(1, 1024), dtype=np.float32)
    assert distinct_images(dot, 10, jitter=0).shape == (10, 1024)  # 25 moves of -2..2 exist
    with pytest.raises(InputError, match="cannot make 26 distinct images from 1"):
        distinct_images(dot, 26, jitter=0)


@pytest.mark.official
def test_distinct_images_keep_the_official_live_row_curve(
    official_data: Path, official_weights: list[sp.csr_matrix], official_images: sp.csr_matrix
) -> None:
    """10 000 images made from the first 1200 die like them, layer by layer; thicker ones
    keep about twice as many rows through the dense layers."""
    layers = fsdgraph.sequential(official_weights, graphchallenge_bias(1024),
                                 cap=32, bias_on_nonzero=True).layers()
    official = live_row_curve(official_images, layers)
    assert official[0] == 1098 / 1200 and official[119] == 19 / 1200
    generated = distinct_images(official_images, 10_000, seed=0)
    curve = live_row_curve(generated, layers)
    assert np.abs(curve - official).max() <= 0.02  # layer 1: 0.925 against 0.915
    assert np.abs(curve[7:] - official[7:]).max() <= 0.002  # the dense layers: within noise
    thick = live_row_curve(distinct_images(official_images, 10_000, seed=0, thicken=THICKER),
                           layers)
    assert 1.8 <= thick[119] / official[119] <= 2.3
    assert np.all(thick >= curve)
    # the originals come first: their official categories still hold
    y = serial_inference(generated, layers)
    truth = load_truth(official_data / TRUTH)
    found = categories(y)
    assert np.array_equal(found[found < 1200], truth)
    # moved copies (no jitter) die as their originals do, and end in the same categories
    moved = distinct_images(official_images, 2400, seed=1, jitter=0)[1200:]
    assert np.abs(live_row_curve(moved, layers) - official).max() <= 2 / 1200
    assert np.array_equal(categories(serial_inference(moved, layers)), truth)
