"""The wire format: :class:`BlockCodec` and :class:`TextCodec` round trips, chunking within a size
limit, clear :class:`ProtocolError` for malformed input, a golden encoding, and the batch packer
of the queue channel (:func:`pack_batches`); then the raw arrays of whole objects
(:func:`fsdgraph.serialize.pack_parts`, raw blocks, the input and output objects), round trips
and malformed input.

"Exact" means bit-identical: rows equal and every value equal as raw float32 bits.
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections import Counter
from typing import Any

import lz4.block
import msgpack
import numpy as np
import pytest
import scipy.sparse as sp

from fsdgraph.channels.queue import pack_batches
from fsdgraph.codec import (
    INPUT_VERSION,
    OUTPUT_VERSION,
    BlockCodec,
    Chunk,
    TextCodec,
    block_fields,
    block_from_fields,
    input_parts,
    output_parts,
    read_input,
    read_output,
)
from fsdgraph.errors import ProtocolError
from fsdgraph.integrity import RunKey
from fsdgraph.kernels import Block
from fsdgraph.resources import RunNames
from fsdgraph.sealed import seal, unseal_parts
from fsdgraph.serialize import Joined, pack, pack_parts, unpack, unpack_parts
from fsdgraph.transport import Entry, entry_size

CODEC = BlockCodec()


# -- helpers -------------------------------------------------------------------------------------
def bits(values: np.ndarray) -> np.ndarray:
    """The raw bits of float32 values (so -0.0 != 0.0 and NaN == NaN by payload)."""
    return np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)


def cells(block: Block) -> np.ndarray:
    """A block's (rows x ncols) values as a dense float32 array, whatever its layout."""
    return np.asarray(block.to_csr().toarray(), dtype=np.float32)


def assert_same(got: Block, want: Block) -> None:
    """Rows and values bit-identical (the layout, dense or CSR, may differ)."""
    assert got.ncols == want.ncols
    np.testing.assert_array_equal(np.asarray(got.rows, np.int64), np.asarray(want.rows, np.int64))
    np.testing.assert_array_equal(bits(cells(got)), bits(cells(want)))


def roundtrip(block: Block, col0: int = 0) -> Chunk:
    chunk = CODEC.decode(CODEC.encode(block, col0))
    assert chunk.col0 == col0
    assert_same(chunk.block, block)
    return chunk


def reassemble(block: Block, payloads: list[bytes], max_bytes: int) -> None:
    """Decode every chunk, place it at its rows and ``[col0, col0 + ncols)``, and check that the
    chunks tile the block exactly once and reproduce it bit for bit."""
    out = np.zeros((len(block.rows), block.ncols), np.float32)
    covered = np.zeros(out.shape, np.int64)
    for payload in payloads:
        assert len(payload) <= max_bytes
        chunk = CODEC.decode(payload)
        positions = np.searchsorted(block.rows, chunk.block.rows)
        assert np.array_equal(block.rows[positions], chunk.block.rows), "rows not in the block"
        hi = chunk.col0 + chunk.block.ncols
        assert 0 <= chunk.col0 < hi <= block.ncols
        out[np.ix_(positions, np.arange(chunk.col0, hi))] = cells(chunk.block)
        covered[np.ix_(positions, np.arange(chunk.col0, hi))] += 1
    # Rows a chunk may leave out are all-zero; no cell may arrive twice.
    assert covered.max(initial=0) <= 1
    np.testing.assert_array_equal(bits(out), bits(cells(block)))


def random_values(rng: np.random.Generator, shape: tuple[int, int], density: float) -> np.ndarray:
    """Values of every kind the wire must keep: saturated caps, small integers, arbitrary and
    negative floats, subnormals."""
    kinds = rng.integers(0, 4, size=shape)
    values = np.select(
        [kinds == 0, kinds == 1, kinds == 2],
        [np.float32(32.0), rng.integers(1, 9, size=shape).astype(np.float32),
         rng.standard_normal(shape).astype(np.float32) * 100],
        np.float32(1e-42),  # subnormal
    ).astype(np.float32)
    values[rng.random(shape) >= density] = 0
    values[:, 0][~values.any(axis=1)] = 1.0  # every row alive, as channels send them
    return values


def random_block(rng: np.random.Generator, nrows: int, ncols: int, density: float,
                 dense: bool) -> Block:
    rows = np.sort(rng.choice(10 * nrows + 5, size=nrows, replace=False)).astype(np.int32)
    values = random_values(rng, (nrows, ncols), density)
    if dense:
        return Block(rows, dense_t=np.ascontiguousarray(values.T))
    return Block(rows, csr=sp.csr_matrix(values))


def repack(payload: bytes, **changes: Any) -> bytes:
    """``payload`` with some msgpack fields replaced (to craft malformed chunks)."""
    msg = msgpack.unpackb(payload, raw=False)
    msg.update(changes)
    return bytes(msgpack.packb(msg, use_bin_type=True))


# -- BlockCodec round trips ----------------------------------------------------------------------
def test_empty_block_round_trips() -> None:
    """A block with no rows survives encode/decode with its width."""
    chunk = roundtrip(Block.empty(7))
    assert len(chunk.block.rows) == 0 and chunk.block.ncols == 7


def test_one_row_round_trips() -> None:
    """A single row, dense and sparse, keeps its row id, values and column offset."""
    values = np.array([[0, 3.5, 0, 0, 0, 0, 0, 0, 0, 0, 0, -2]], np.float32)
    roundtrip(Block(np.array([123456], np.int32), dense_t=np.ascontiguousarray(values.T)), 17)
    roundtrip(Block(np.array([0], np.int32), csr=sp.csr_matrix(values)), 0)


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "csr"])
@pytest.mark.parametrize("density", [0.02, 0.3, 1.0])
def test_random_blocks_round_trip_exactly(dense: bool, density: float) -> None:
    """Dense and CSR blocks of every density (the encoder may switch layout) decode bit for
    bit, on many seeded random shapes."""
    rng = np.random.default_rng(1000 + int(density * 100) + dense)
    for _ in range(40):
        block = random_block(rng, int(rng.integers(1, 60)), int(rng.integers(1, 90)), density,
                             dense)
        roundtrip(block, int(rng.integers(0, 10**6)))


def test_large_row_ids_and_gaps_round_trip() -> None:
    """Row ids near the int32 range and irregular gaps survive the delta coding."""
    rows = np.array([0, 1, 2, 70_000, 2**31 - 2], np.int32)
    values = np.arange(15, dtype=np.float32).reshape(5, 3) + 1
    roundtrip(Block(rows, dense_t=np.ascontiguousarray(values.T)))
    roundtrip(Block(rows, csr=sp.csr_matrix(values)))


def test_csr_block_with_empty_middle_row_round_trips() -> None:
    """A CSR row without values between live rows decodes as an empty row."""
    values = np.zeros((3, 40), np.float32)
    values[0, 5] = 1
    values[2, 39] = 2
    roundtrip(Block(np.array([1, 2, 3], np.int32), csr=sp.csr_matrix(values)))


def test_csr_block_with_empty_last_row_round_trips() -> None:
    """A CSR block whose last row has no values (Block.take_columns keeps such rows) decodes."""
    values = np.zeros((2, 40), np.float32)
    values[0, 5] = 1
    roundtrip(Block(np.array([1, 2], np.int32), csr=sp.csr_matrix(values)))


# -- chunking -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dense", [True, False], ids=["dense", "csr"])
def test_block_needing_many_chunks_is_split_by_rows(dense: bool) -> None:
    """Every chunk fits the limit and the chunks reassemble the block exactly."""
    rng = np.random.default_rng(7)
    block = random_block(rng, 600, 100, 0.3 if dense else 0.08, dense)
    max_bytes = len(CODEC.encode(block)) // 20
    assert max_bytes > 600  # one row fits alone: a split by rows only
    payloads = CODEC.encode_chunks(block, max_bytes)
    assert len(payloads) > 10
    reassemble(block, payloads, max_bytes)


def test_chunking_property_on_random_blocks() -> None:
    """On many seeded random blocks and limits (each row fitting alone), chunks stay within the
    limit and tile the block exactly once."""
    rng = np.random.default_rng(2024)
    for _ in range(60):
        block = random_block(rng, int(rng.integers(1, 120)), int(rng.integers(1, 50)),
                             float(rng.choice([0.05, 0.2, 0.9])), bool(rng.integers(0, 2)))
        widest_row = max(len(CODEC.encode(block.take_rows(np.array([i]))))
                         for i in range(len(block.rows)))
        max_bytes = int(rng.integers(widest_row, len(CODEC.encode(block)) + 50))
        reassemble(block, CODEC.encode_chunks(block, max_bytes), max_bytes)


def test_one_dense_row_too_wide_is_split_by_columns() -> None:
    """A single row larger than the limit is cut into column ranges with the right ``col0``."""
    rng = np.random.default_rng(3)
    values = rng.standard_normal((1, 3000)).astype(np.float32)
    block = Block(np.array([42], np.int32), dense_t=np.ascontiguousarray(values.T))
    max_bytes = 1000
    payloads = CODEC.encode_chunks(block, max_bytes)
    assert len(payloads) >= 12
    col0s = [CODEC.decode(p).col0 for p in payloads]
    assert len(set(col0s)) == len(col0s) and 0 in col0s
    reassemble(block, payloads, max_bytes)


def test_one_sparse_row_too_wide_is_split_by_columns() -> None:
    """A single sparse row too wide for the limit splits by columns and reassembles exactly,
    also when its values sit in a few columns (so some column ranges hold none)."""
    values = np.zeros((1, 4000), np.float32)
    values[0, :200] = np.arange(1, 201)
    block = Block(np.array([9], np.int32), csr=sp.csr_matrix(values))
    assert block.density <= 0.1  # stays CSR on the wire
    reassemble(block, CODEC.encode_chunks(block, 300), 300)


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "csr"])
def test_limit_exactly_at_the_encoded_size(dense: bool) -> None:
    """max_bytes equal to the encoded size gives that one encoding; one byte less splits it."""
    block = random_block(np.random.default_rng(11), 40, 30, 0.5 if dense else 0.08, dense)
    whole = CODEC.encode(block)
    assert CODEC.encode_chunks(block, len(whole)) == [whole]
    payloads = CODEC.encode_chunks(block, len(whole) - 1)
    assert len(payloads) >= 2
    reassemble(block, payloads, len(whole) - 1)


def test_empty_block_is_one_chunk() -> None:
    """A block without rows is one (small) chunk."""
    payloads = CODEC.encode_chunks(Block.empty(5), 100)
    assert len(payloads) == 1
    assert len(CODEC.decode(payloads[0]).block.rows) == 0


def test_value_that_cannot_fit_is_a_protocol_error() -> None:
    """A limit below the size of one value fails with a message saying so."""
    block = Block(np.array([0], np.int32), dense_t=np.ones((1, 1), np.float32))
    with pytest.raises(ProtocolError, match=r"one value does not fit in 20 bytes"):
        CODEC.encode_chunks(block, 20)


# -- malformed input -------------------------------------------------------------------------------
@pytest.mark.parametrize("data", [b"", b"\xc1", b"not msgpack at all", bytes(range(256))],
                         ids=["empty", "reserved-byte", "text", "all-bytes"])
def test_garbage_is_a_protocol_error(data: bytes) -> None:
    """Bytes that are not a chunk raise ProtocolError saying so (never another exception)."""
    with pytest.raises(ProtocolError, match=r"undecodable chunk|chunk codec"):
        CODEC.decode(data)


def test_random_garbage_is_always_a_protocol_error() -> None:
    """Seeded random byte strings, and random corruptions of a valid chunk, either decode or
    raise ProtocolError: the decoder never leaks IndexError, KeyError, lz4 errors..."""
    rng = np.random.default_rng(5)
    valid = CODEC.encode(random_block(rng, 20, 30, 0.1, False))
    for i in range(400):
        if i % 2:
            data = rng.integers(0, 256, size=int(rng.integers(1, 200)), dtype=np.uint8).tobytes()
        else:
            corrupt = np.frombuffer(valid, np.uint8).copy()
            at = rng.integers(0, len(corrupt), size=3)
            corrupt[at] = rng.integers(0, 256, size=3, dtype=np.uint8)
            data = corrupt.tobytes()
        with contextlib.suppress(ProtocolError):
            CODEC.decode(data)


def test_wrong_codec_id_is_rejected() -> None:
    """A chunk from another codec version names both ids."""
    payload = repack(CODEC.encode(Block.empty(3)), c="fsd-block-0")
    with pytest.raises(ProtocolError, match=r"chunk codec 'fsd-block-0' is not 'fsd-block-1'"):
        CODEC.decode(payload)
    with pytest.raises(ProtocolError, match=r"chunk codec 'list' is not 'fsd-block-1'"):
        CODEC.decode(bytes(msgpack.packb([1, 2])))


def test_truncated_payload_is_rejected() -> None:
    """A chunk cut short (framing or compressed array) is a ProtocolError."""
    block = random_block(np.random.default_rng(1), 30, 20, 0.5, True)
    payload = CODEC.encode(block)
    for cut in (1, 5, len(payload) // 2, len(payload) - 1):
        with pytest.raises(ProtocolError, match=r"undecodable chunk \(\d+ bytes\)"):
            CODEC.decode(payload[:cut])
    shuffled, size, data = msgpack.unpackb(payload, raw=False)["x"]
    with pytest.raises(ProtocolError, match=r"undecodable chunk array"):
        CODEC.decode(repack(payload, x=[shuffled, size, data[: len(data) // 2]]))


def test_array_of_the_wrong_length_is_rejected() -> None:
    """A row count that disagrees with the arrays is reported with both sizes."""
    payload = repack(CODEC.encode(Block(np.array([1, 2], np.int32),
                                        dense_t=np.ones((3, 2), np.float32))), m=3)
    with pytest.raises(ProtocolError, match=r"chunk array of 8 bytes, expected 12"):
        CODEC.decode(payload)


def test_column_index_out_of_range_is_rejected() -> None:
    """A CSR chunk whose column ids exceed its declared width is rejected."""
    values = np.zeros((2, 50), np.float32)
    values[0, 3] = 1
    values[1, 40] = 2
    payload = CODEC.encode(Block(np.array([0, 1], np.int32), csr=sp.csr_matrix(values)))
    assert msgpack.unpackb(payload, raw=False)["f"] == "s"
    with pytest.raises(ProtocolError, match=r"chunk column index out of range"):
        CODEC.decode(repack(payload, n=10))


def test_negative_column_offset_is_rejected() -> None:
    """A chunk cannot start before column 0 of its edge (a negative ``col0`` would slice the
    receiver's positions from the end)."""
    payload = CODEC.encode(Block(np.array([1], np.int32), dense_t=np.ones((2, 1), np.float32)))
    with pytest.raises(ProtocolError, match=r"col"):
        CODEC.decode(repack(payload, o=-1))


def test_rows_not_increasing_are_rejected() -> None:
    """Row ids must rise strictly (a duplicate or reordered row would be added twice)."""
    payload = CODEC.encode(Block(np.array([5, 3], np.int32), dense_t=np.ones((2, 2), np.float32)))
    with pytest.raises(ProtocolError, match=r"chunk row ids are not increasing"):
        CODEC.decode(payload)


def test_missing_field_is_rejected() -> None:
    """A chunk without its values names the missing field."""
    msg = msgpack.unpackb(CODEC.encode(Block.empty(3)), raw=False)
    del msg["f"]
    with pytest.raises(ProtocolError, match=r"malformed chunk: KeyError\('f'\)"):
        CODEC.decode(bytes(msgpack.packb(msg, use_bin_type=True)))


def test_array_field_of_the_wrong_shape_is_rejected() -> None:
    """Array fields that are not ``[shuffled, size, data]`` are a ProtocolError."""
    payload = CODEC.encode(Block(np.array([1], np.int32), dense_t=np.ones((2, 1), np.float32)))
    for bad in (None, 7, [True, 8], [True, 8, "text"], [True, 8, b"x", 1]):
        with pytest.raises(ProtocolError):
            CODEC.decode(repack(payload, x=bad))


# -- golden bytes --------------------------------------------------------------------------------
# The exact encodings of two small blocks, computed once with codec id "fsd-block-1" (msgpack 1.x,
# lz4 block format). If one of these tests fails, the wire format changed: bump
# BlockCodec.codec_id (old workers must reject new chunks, and vice versa), then update the
# bytes. (A new lz4 release could also compress differently without a format change; then the
# decode half must still pass.)
GOLDEN_DENSE = bytes.fromhex(
    "87a163ab6673642d626c6f636b2d31a16f00a16e04a16d03a17293c30cc40dc000030100000000000000000"
    "0a166a164a17893c330c41f1f00010004f009c000e00000e00080e00000e03f0040004240403e40424240")
GOLDEN_CSR = bytes.fromhex(
    "89a163ab6673642d626c6f636b2d31a16f28a16e10a16d03a17293c30cc40dc002030400000000000000000"
    "0a166a173a16b93c30cc40dc0010201000000000000000000a16993c310c412f00102000f0900000000000000"
    "0000000000a17893c310c40d1300010080a040e0003f40c03f")


def golden_dense_block() -> Block:
    values = np.array([[1.5, 0, 2, 32], [0, 32, 0.25, 32], [7, 7, 7, 7]], np.float32)
    return Block(np.array([0, 3, 4], np.int32), dense_t=np.ascontiguousarray(values.T))


def golden_csr_block() -> Block:
    values = np.zeros((3, 16), np.float32)
    values[0, 2], values[1, 0], values[1, 15], values[2, 9] = 1.25, 3, -7, 0.5
    return Block(np.array([2, 5, 9], np.int32), csr=sp.csr_matrix(values))


def test_golden_dense_bytes() -> None:
    """The dense layout's bytes are frozen (see the comment above GOLDEN_DENSE)."""
    assert BlockCodec.codec_id == "fsd-block-1"
    chunk = CODEC.decode(GOLDEN_DENSE)
    assert chunk.col0 == 0
    assert_same(chunk.block, golden_dense_block())
    assert CODEC.encode(golden_dense_block()).hex() == GOLDEN_DENSE.hex()


def test_golden_csr_bytes() -> None:
    """The CSR layout's bytes (gap-coded column ids, col0 = 40) are frozen."""
    assert BlockCodec.codec_id == "fsd-block-1"
    chunk = CODEC.decode(GOLDEN_CSR)
    assert chunk.col0 == 40
    assert_same(chunk.block, golden_csr_block())
    assert CODEC.encode(golden_csr_block(), col0=40).hex() == GOLDEN_CSR.hex()


def test_encoding_is_deterministic_and_compact() -> None:
    """Equal blocks encode to equal bytes, and saturated values compress far below raw size:
    they go plain (not shuffled), as one lz4 block of the column-major values."""
    values = np.full((200, 100), 32.0, np.float32)
    values[::7, 3] = 1.5
    block = Block(np.arange(200, dtype=np.int32), dense_t=np.ascontiguousarray(values.T))
    encoded = CODEC.encode(block)
    assert encoded == CODEC.encode(block)
    assert len(encoded) < values.nbytes // 50
    shuffled, size, data = msgpack.unpackb(encoded, raw=False)["x"]
    assert (shuffled, size) == (False, values.nbytes)
    assert lz4.block.decompress(data, uncompressed_size=size) == values.T.tobytes()


# -- TextCodec ------------------------------------------------------------------------------------
def test_text_codec_round_trips() -> None:
    """Any bytes survive base64, and the text length is what ``encoded_size`` predicts."""
    text = TextCodec()
    rng = np.random.default_rng(9)
    for n in [*range(40), 1000, 4095, 4096, 4097]:
        data = rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
        encoded = text.encode(data)
        assert encoded.isascii()
        assert len(encoded.encode()) == TextCodec.encoded_size(n)
        assert text.decode(encoded) == data


def test_text_codec_budget_edges() -> None:
    """``raw_budget(t)`` is the largest raw size whose text fits in ``t`` bytes: it fits, one
    more byte does not."""
    for t in range(0, 300):
        raw = TextCodec.raw_budget(t)
        assert raw >= 0
        assert TextCodec.encoded_size(raw) <= t
        assert TextCodec.encoded_size(raw + 1) > t
    assert TextCodec.encoded_size(0) == 0
    assert (TextCodec.encoded_size(1), TextCodec.encoded_size(3), TextCodec.encoded_size(4)) \
        == (4, 4, 8)
    assert (TextCodec.raw_budget(3), TextCodec.raw_budget(4), TextCodec.raw_budget(7)) == (0, 3, 3)


@pytest.mark.parametrize("text", ["not base64!", "QUJ", "QU JD", "ÄÖÜ="])
def test_text_codec_rejects_bad_text(text: str) -> None:
    """A body that is not strict base64 (or not ASCII) is a ProtocolError."""
    with pytest.raises(ProtocolError, match=r"message body is not base64"):
        TextCodec().decode(text)


def test_block_survives_text_wrapping() -> None:
    """Block -> bytes -> base64 -> bytes -> block, as on the queue channel."""
    block = random_block(np.random.default_rng(4), 25, 33, 0.2, False)
    text = TextCodec().encode(CODEC.encode(block, 5))
    assert base64.b64decode(text) == CODEC.encode(block, 5)
    chunk = CODEC.decode(TextCodec().decode(text))
    assert chunk.col0 == 5
    assert_same(chunk.block, block)


# -- pack_batches ---------------------------------------------------------------------------------
def random_entries(rng: np.random.Generator, count: int, largest: int) -> list[Entry]:
    entries = []
    for i in range(count):
        attributes = {"layer": str(int(rng.integers(0, 1000))), "index": str(i)}
        overhead = entry_size(Entry("", attributes))
        body = "x" * int(rng.integers(0, max(1, largest - overhead) + 1))
        entries.append(Entry(body, attributes))
    return entries


def test_pack_batches_respects_limits_and_keeps_every_entry() -> None:
    """On many seeded random inputs: each batch within the entry and byte limits, every entry
    exactly once, and no two batches that could have been merged (first fit packs tightly)."""
    rng = np.random.default_rng(12345)
    for _ in range(500):
        max_entries = int(rng.integers(1, 12))
        max_bytes = int(rng.integers(60, 3000))
        entries = random_entries(rng, int(rng.integers(0, 60)), max_bytes)
        assert all(entry_size(e) <= max_bytes for e in entries)
        batches = pack_batches(entries, max_entries, max_bytes)
        for batch in batches:
            assert 1 <= len(batch) <= max_entries
            assert sum(entry_size(e) for e in batch) <= max_bytes
        assert Counter(id(e) for b in batches for e in b) == Counter(id(e) for e in entries)
        sizes = [(len(b), sum(entry_size(e) for e in b)) for b in batches]
        for i, (n1, s1) in enumerate(sizes):
            for n2, s2 in sizes[i + 1:]:
                assert n1 + n2 > max_entries or s1 + s2 > max_bytes


def test_pack_batches_edges() -> None:
    """No entries: no batch; entries exactly at the byte limit go alone; the entry limit
    alone splits tiny entries."""
    assert pack_batches([], 10, 100) == []
    full = [Entry("y" * 100) for _ in range(3)]
    assert [len(b) for b in pack_batches(full, 10, 100)] == [1, 1, 1]
    tiny = [Entry("z") for _ in range(25)]
    assert sorted(len(b) for b in pack_batches(tiny, 10, 10_000)) == [5, 10, 10]


# -- raw arrays: serialize.pack_parts ------------------------------------------------------------
def exactly(message: str) -> str:
    """A ``pytest.raises`` pattern matching ``message`` and nothing else."""
    return "^" + re.escape(message) + "$"


def parts_roundtrip(obj: Any) -> Any:
    """Through :func:`pack_parts`, as bytes (what a reader gets), and back."""
    return unpack_parts([bytes(memoryview(p).cast("B")) for p in pack_parts(obj)])


@pytest.mark.parametrize("array", [
    np.arange(5000, dtype=np.int64) - 2500,  # narrowed to int16
    np.arange(70_000, dtype=np.int32),  # nothing narrower than int32 holds it
    np.array([2**40, -(2**40)] * 300, np.int64),  # nothing narrower holds it
    np.random.default_rng(1).random((40, 30)).astype(np.float32),  # a part of its own
    np.random.default_rng(2).random(50),  # inline float64
    np.full((3, 400), 0.0625, np.float32),  # filled
    np.array([True, False] * 600),
    np.zeros(0, np.int32),
    np.zeros((0, 7), np.float32),
])
def test_parts_round_trip_exactly(array: np.ndarray) -> None:
    got = parts_roundtrip({"a": array, "n": 3})
    assert got["n"] == 3 and got["a"].dtype == array.dtype and got["a"].shape == array.shape
    assert got["a"].tobytes() == array.tobytes()


def test_parts_keep_the_bits_of_signed_zeros_and_nans() -> None:
    """A filled array is only one of identical bits: 0.0 and -0.0, or NaNs with other payloads,
    are not filled, and every bit comes back."""
    mixed = np.zeros(1000, np.float32)
    mixed[500] = -0.0
    nans = np.full(1000, np.nan, np.float32)
    nans.view(np.uint32)[7] = 0x7FC00001
    for a in (mixed, nans, np.full(1000, -0.0, np.float32)):
        assert bits(parts_roundtrip(a)).tobytes() == bits(a).tobytes()


def test_parts_shrink_what_they_can_and_share_the_rest() -> None:
    """Large arrays go in parts of their own (raw, zero-copy on the way back, read-only); a
    uniform array is one element; integer ids are narrowed; a CSR matrix too."""
    rng = np.random.default_rng(3)
    values = rng.random(10_000).astype(np.float32)
    w = sp.random(500, 900, density=0.05, random_state=4, format="csr", dtype=np.float32)
    w.data[:] = 0.5
    parts = pack_parts({"v": values, "ones": np.ones(10_000, np.float32), "w": w})
    sizes = sorted(memoryview(p).cast("B").nbytes for p in parts[1:])
    assert sizes == sorted([2 * w.nnz, 4 * 10_000])  # column ids as uint16, values raw
    assert len(parts[0]) < 3000  # the message: indptr narrowed, the fills, the headers
    names = RunNames("r1", key=RunKey.generate())
    body = seal(names, "k", parts)
    views = unseal_parts(names, "k", body)
    got = unpack_parts(views)
    # A view of the body where the body leaves it aligned for float32, else an aligned copy.
    aligned = np.frombuffer(views[1], np.uint8).ctypes.data % 4 == 0
    assert np.shares_memory(got["v"], np.frombuffer(body, np.uint8)) == aligned
    assert got["v"].flags.aligned and got["v"].flags.writeable != aligned
    np.testing.assert_array_equal(got["v"], values)
    assert got["ones"].tolist() == [1.0] * 10_000
    assert got["w"].indices.dtype == w.indices.dtype and (got["w"] != w).nnz == 0


@pytest.mark.parametrize("arrays", [
    [],
    [np.arange(3, dtype=np.int32), np.zeros(0, np.int32), np.arange(2, dtype=np.int32)],
    [np.arange(5000, dtype=np.int32) % 700 for _ in range(4)],  # large pieces, narrowed
    [np.full(6000, 0.0625, np.float32) for _ in range(3)],  # one fill for every piece
    [np.full(6000, 0.0625, np.float32), np.full(6000, -0.0625, np.float32)],  # two values
    [np.arange(n, dtype=np.int64) * 10**9 for n in (4096, 5000)],  # nothing narrower
    [np.arange(40, dtype=np.uint16) for _ in range(300)],  # many small pieces
])
def test_joined_arrays_round_trip_exactly(arrays: list[np.ndarray]) -> None:
    for got in (parts_roundtrip(Joined(arrays)), unpack(pack(Joined(arrays)))):
        assert len(got) == len(arrays)
        for g, a in zip(got, arrays, strict=True):
            assert g.dtype == a.dtype and g.tobytes() == a.tobytes()
            # Not a small view of a large array, which scipy would copy.
            assert g.base is None or (isinstance(g.base, np.ndarray) and g.base.size == g.size)


def test_joined_arrays_must_share_a_dtype_and_add_up() -> None:
    with pytest.raises(TypeError, match="1-D arrays of one dtype"):
        pack_parts(Joined([np.zeros(3, np.int32), np.zeros(3, np.int64)]))
    with pytest.raises(TypeError, match="1-D arrays of one dtype"):
        pack_parts(Joined([np.zeros((3, 2), np.int32)]))
    lengths = ext(1, ["<i8", [2], np.array([2, 2], np.int64).tobytes()])
    for flat in (np.arange(3, dtype=np.int32), np.arange(5, dtype=np.int32)):
        message = msgpack.packb(ext(6, [lengths, ext(1, ["<i4", [len(flat)], flat.tobytes()])]))
        with pytest.raises(ProtocolError, match="lengths do not add up"):
            unpack_parts([message])
        with pytest.raises(ProtocolError, match="lengths do not add up"):
            unpack(message)


def ext(code: int, payload: list[Any]) -> msgpack.ExtType:
    return msgpack.ExtType(code, msgpack.packb(payload, use_bin_type=True))


@pytest.mark.parametrize(("parts", "message"), [
    ([], "no parts to decode"),
    ([b"\xc1"], "cannot decode msgpack payload"),
    ([msgpack.packb(ext(3, ["<f4", [4], "<f4", 1]))], r"array in part 1: no such part"),
    ([msgpack.packb([ext(3, ["<f4", [1], "<f4", 1])] * 2), b"\0" * 4], r"used twice"),
    ([msgpack.packb(7), b"x"], r"1 of 1 parts hold no array"),
    ([msgpack.packb(ext(3, ["<f4", [3], "<f4", b"\0" * 8]))], r"has 8 bytes"),
    ([msgpack.packb(ext(3, ["<i2", [1], "<i4", b"\0" * 4]))], r"cannot be stored as int32"),
    ([msgpack.packb(ext(3, ["<f8", [1], "<f4", b"\0" * 4]))], r"cannot be stored as float32"),
    ([msgpack.packb(ext(3, ["|O", [1], "|O", b"\0" * 8]))], r"unsupported dtype '\|O'"),
    ([msgpack.packb(ext(3, ["<f4", [-1], "<f4", b""]))], r"shape \[-1\] is not a list"),
    ([msgpack.packb(ext(3, ["<f4", [1], "<f4", 2.5]))], r"array data is a float"),
    ([msgpack.packb(ext(4, ["<f4", [3], b"\0" * 8]))], r"element of 8 bytes"),
    ([msgpack.packb(ext(4, ["|u1", [2**20, 2**20], b"\0"]))], r"at most 4294967296"),
    ([msgpack.packb(ext(5, [[2, 3], ext(1, ["<i4", [3], np.array([0, 1, 1], np.int32).tobytes()]),
                            ext(1, ["<i4", [1], np.array([3], np.int32).tobytes()]),
                            ext(1, ["<f4", [1], b"\0" * 4])]))], r"inconsistent index arrays"),
    ([msgpack.packb(ext(5, [[2, 3], ext(1, ["<i4", [3], np.array([0, 2, 1], np.int32).tobytes()]),
                            ext(1, ["<i4", [1], np.array([0], np.int32).tobytes()]),
                            ext(1, ["<f4", [1], b"\0" * 4])]))], r"inconsistent index arrays"),
    ([msgpack.packb(ext(9, []))], r"unknown msgpack extension type 9"),
])
def test_malformed_parts_are_a_protocol_error(parts: list[bytes], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        unpack_parts(parts)


def test_random_garbage_parts_are_always_a_protocol_error() -> None:
    rng = np.random.default_rng(5)
    good = [bytes(memoryview(p).cast("B")) for p in pack_parts(
        {"a": np.arange(3000, dtype=np.int32) * 7, "w": sp.eye(300, format="csr")})]
    for _ in range(300):
        damaged = [bytearray(p) for p in good]
        i = int(rng.integers(len(damaged)))
        if damaged[i]:
            damaged[i][int(rng.integers(len(damaged[i])))] ^= 1 << int(rng.integers(8))
        with contextlib.suppress(ProtocolError):
            unpack_parts([bytes(p) for p in damaged])  # anything but another exception


# -- raw blocks and the input and output objects -------------------------------------------------
def raw_roundtrip(block: Block, batch: int | None = None) -> Block:
    got = block_from_fields(parts_roundtrip(block_fields(block)), batch)
    assert_same(got, block)
    assert got.is_dense == block.is_dense and got.rows.dtype == np.int32
    return got


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.6, 1.0])
def test_raw_blocks_round_trip_exactly(dense: bool, density: float) -> None:
    rng = np.random.default_rng(int(density * 100) + dense)
    values = (rng.random((60, 37)) < density) * rng.integers(1, 40, (60, 37)).astype(np.float32)
    block = Block.from_dense(np.arange(0, 180, 3), values)
    block = block.as_dense() if dense else block.as_csr()
    got = raw_roundtrip(block, batch=180)
    if not dense and block.nnz:
        assert got.csr is not None and got.csr.has_sorted_indices


def test_raw_empty_block_round_trips() -> None:
    raw_roundtrip(Block.empty(5))


def csr_fields(rows: list[int], ncols: int, indptr: list[int], indices: list[int],
               data: np.ndarray | None = None) -> dict[str, Any]:
    return {"f": "fsd-raw-block-1", "rows": np.array(rows, np.int32), "ncols": ncols,
            "indptr": np.array(indptr, np.int64), "indices": np.array(indices, np.int32),
            "data": np.ones(len(indices), np.float32) if data is None else data}


@pytest.mark.parametrize(("fields", "message"), [
    ([1, 2], r"block layout 'list' is not 'fsd-raw-block-1'"),
    ({"f": "fsd-raw-block-0"}, r"block layout 'fsd-raw-block-0'"),
    ({"f": "fsd-raw-block-1"}, r"field 'rows' is not a 1-D array"),
    ({"f": "fsd-raw-block-1", "rows": np.array([0.5])}, r"field 'rows'"),
    (csr_fields([3, 3], 4, [0, 1, 2], [0, 1]), r"row ids are not increasing"),
    (csr_fields([-1], 4, [0, 1], [0]), r"row ids are not increasing"),
    (csr_fields([10], 4, [0, 1], [0]), r"row ids are not increasing ids of the batch"),
    ({"f": "fsd-raw-block-1", "rows": np.array([1, 2], np.int32),
      "dense_t": np.ones((3, 3), np.float32)}, r"dense values of shape \(3, 3\)"),
    ({"f": "fsd-raw-block-1", "rows": np.array([1], np.int32),
      "dense_t": np.ones((3, 1), np.float64)}, r"dtype float64"),
    (csr_fields([1], -1, [0, 1], [0]), r"column count -1"),
    (csr_fields([1, 2], 4, [0, 1], [0]), r"CSR arrays of 2 pointers"),
    (csr_fields([1, 2], 4, [1, 1, 2], [0, 1]), r"CSR arrays"),
    (csr_fields([1], 4, [0, 1], [0], np.ones(1, np.float64)), r"values \(float64\)"),
    (csr_fields([1, 2], 4, [0, 2, 1], [0]), r"CSR arrays of 3 pointers"),
    (csr_fields([1, 2], 4, [0, 1, 0], []), r"CSR arrays of 3 pointers, 0 column ids"),
    (csr_fields([1, 2], 4, [0, 1, 2], [0, 4]), r"out of range or not sorted"),
    (csr_fields([1, 2], 4, [0, 1, 2], [-1, 0]), r"out of range or not sorted"),
    (csr_fields([1], 4, [0, 2], [2, 1]), r"out of range or not sorted"),
])
def test_malformed_raw_blocks_are_a_protocol_error(fields: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        block_from_fields(fields, batch=8)


def test_raw_block_rows_may_start_anew_and_repeat_ids_across_rows() -> None:
    """Column ids only rise within a row: the next row starts low again."""
    block = block_from_fields(csr_fields([0, 5], 4, [0, 2, 4], [1, 3, 0, 2]), batch=8)
    assert block.to_csr().toarray().tolist() == [[0, 1, 0, 1], [1, 0, 1, 0]]


def test_input_and_output_objects_round_trip_and_check_their_version() -> None:
    block = Block.from_dense(np.array([1, 4]), np.array([[1, 0, 2], [0, 3, 0]], np.float32))
    parts = [bytes(memoryview(p).cast("B")) for p in input_parts(block)]
    assert_same(read_input("k", parts, batch=5), block)
    with pytest.raises(ProtocolError, match=r"^object k: raw block: row ids"):
        read_input("k", parts, batch=4)
    stale = [msgpack.packb({"version": INPUT_VERSION - 1, "block": None})]
    with pytest.raises(ProtocolError, match=exactly(
            f"object k: input version {INPUT_VERSION - 1} is not {INPUT_VERSION}, the version "
            "this fsdgraph reads")):
        read_input("k", stale, batch=5)
    with pytest.raises(ProtocolError, match=r"^object k: input version 'list'"):
        read_input("k", [msgpack.packb([1])], batch=5)

    out = [bytes(memoryview(p).cast("B"))
           for p in output_parts(block, np.array([7, 2, 9], np.int32), {"worker": 3})]
    got, columns, metrics = read_output("o", out, batch=5, width=10)
    assert_same(got, block)
    assert columns.tolist() == [7, 2, 9] and metrics == {"worker": 3}
    with pytest.raises(ProtocolError, match=r"^object o: output column ids do not match"):
        read_output("o", out, batch=5, width=9)
    short = [bytes(memoryview(p).cast("B"))
             for p in output_parts(block, np.array([7, 2], np.int32), {"worker": 3})]
    with pytest.raises(ProtocolError, match=r"output column ids do not match its block"):
        read_output("o", short, batch=5, width=10)
    with pytest.raises(ProtocolError, match=exactly(
            f"object o: output version 1 is not {OUTPUT_VERSION}, the version this fsdgraph "
            "reads")):
        read_output("o", [msgpack.packb({"version": 1})], batch=5, width=10)
    no_metrics = [bytes(memoryview(p).cast("B")) for p in pack_parts(
        {"version": OUTPUT_VERSION, "block": block_fields(block),
         "columns": np.array([1, 2, 3], np.int32), "metrics": []})]
    with pytest.raises(ProtocolError, match=r"^object o: output without metrics$"):
        read_output("o", no_metrics, batch=5, width=10)
