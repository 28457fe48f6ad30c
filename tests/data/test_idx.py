"""The IDX reader: round trips, every element type, and each kind of corrupt file."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest

from dcvbench.data import DataError, read_idx, write_idx
from dcvbench.data.idx import IMAGES_MAGIC, LABELS_MAGIC


@pytest.mark.parametrize("name", ["images-idx3-ubyte.gz", "images-idx3-ubyte"])
def test_round_trip_gzipped_and_raw(tmp_path, name):
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / name, images)
    assert path.read_bytes().startswith(b"\x1f\x8b") == name.endswith(".gz")
    out = read_idx(path, IMAGES_MAGIC)
    assert out.dtype == np.uint8 and out.shape == (7, 28, 28)
    np.testing.assert_array_equal(out, images)


def test_gzip_detected_by_content_not_name(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    path = write_idx(tmp_path / "labels-idx1-ubyte", labels, compress=True)  # gzip without .gz
    np.testing.assert_array_equal(read_idx(path, LABELS_MAGIC), labels)


def test_big_endian_int32_elements(tmp_path):
    values = np.array([[1, -2, 70000], [3, 4, -5]], dtype=">i4")
    header = (0x0C02).to_bytes(4, "big") + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    path = tmp_path / "ints-idx2-int"
    path.write_bytes(header + values.tobytes())
    out = read_idx(path)
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, values)


def idx_bytes(array: np.ndarray) -> bytes:
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


GOOD = idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))


@pytest.mark.parametrize(
    ("content", "expected_magic", "words"),
    [
        (b"", None, "too short"),
        (b"PK\x03\x04" + GOOD[4:], None, "not an IDX file"),  # a zip archive, say
        (b"\x00\x00\x07\x03" + GOOD[4:], None, "not an IDX file"),  # unknown element type
        (GOOD, LABELS_MAGIC, "unexpected IDX magic 0x00000803"),  # images where labels belong
        (GOOD[:10], None, "header cut short"),
        (GOOD[:-1], None, "truncated"),
        (GOOD + b"\x00", None, "trailing bytes"),
    ],
)
@pytest.mark.parametrize("compress", [False, True])
def test_corrupt_files_raise_one_line_naming_the_file(tmp_path, content, expected_magic, words, compress):
    path = tmp_path / ("file.gz" if compress else "file")
    path.write_bytes(gzip.compress(content) if compress else content)
    with pytest.raises(DataError, match=words) as info:
        read_idx(path, expected_magic)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


@pytest.mark.parametrize(
    "dims",
    [
        (2**16, 2**16, 2**16, 2**16),  # 2⁶⁴ elements: 0 in int64, the size of a bare header
        (2**31, 2**31, 4),  # the same with the images' three dimensions
        (2**32 - 1, 2**32 - 1, 2**32 - 1),  # wraps to a wrong, but positive, size
    ],
)
def test_a_header_whose_size_overflows_is_one_line_with_the_true_size(tmp_path, dims):
    header = (0x0800 | len(dims)).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    path = tmp_path / "huge-idx-ubyte"
    path.write_bytes(header)
    with pytest.raises(DataError, match="truncated IDX file") as info:
        read_idx(path)
    message = str(info.value)
    assert f"expected {len(header) + math.prod(dims)} for shape {list(dims)}" in message
    assert str(path) in message and "\n" not in message


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(GOOD)[:-20])  # cut short mid-stream
    with pytest.raises(DataError, match="corrupt gzip file") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="missing"):
        read_idx(tmp_path / "nope")
