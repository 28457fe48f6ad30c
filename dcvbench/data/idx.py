"""A strict reader for the IDX format of MNIST and Fashion-MNIST, gzipped or not.

Layout (LeCun et al.): a big-endian int32 magic number — two zero bytes, one byte for the element
type, one byte for the number of dimensions — then each dimension as a big-endian int32, then the
elements row-major, big-endian. MNIST's images have magic ``0x00000803`` (uint8, 3 dimensions), its
labels ``0x00000801`` (uint8, 1 dimension).

Every check below ends in a one-line :class:`DataError` naming the file: a truncated download
should say so, not surface later as a reshape error. Data are read with ``numpy.frombuffer``: no
pickle anywhere.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from dcvbench.data.errors import DataError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

# Element type byte → big-endian numpy dtype, from the IDX specification.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it is gzip (by its leading bytes, whatever its name)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"missing {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"corrupt gzip file {path} ({exc}): delete it and download it again") from None


def parse_idx(content: bytes, path: Path, expected_magic: int | None = None) -> np.ndarray:
    """Parse IDX ``content`` (already gunzipped) into an array in native byte order.

    Args:
        content: the whole file.
        path: the file's name, for error messages only.
        expected_magic: when given, the magic number the file must carry (e.g. :data:`IMAGES_MAGIC`).

    Returns:
        The elements, shaped as the header says. uint8 data come back as a read-only view of
        ``content``; other types are converted to native byte order.
    """
    hint = "delete it and download it again"
    if len(content) < 4:
        raise DataError(f"corrupt IDX file {path}: {len(content)} bytes, too short for a header; {hint}")
    magic = int.from_bytes(content[:4], "big")
    zeros, type_code, ndim = magic >> 16, (magic >> 8) & 0xFF, magic & 0xFF
    if zeros != 0 or type_code not in IDX_DTYPES or ndim == 0:
        raise DataError(f"not an IDX file: {path} (magic 0x{magic:08x}); {hint}")
    if expected_magic is not None and magic != expected_magic:
        raise DataError(
            f"unexpected IDX magic 0x{magic:08x} in {path}, expected 0x{expected_magic:08x}; {hint}"
        )
    header = 4 + 4 * ndim
    if len(content) < header:
        raise DataError(f"truncated IDX file {path}: header cut short; {hint}")
    dims = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_DTYPES[type_code]
    # Python ints, never int64: a crafted header's product (say 2¹⁶ four times) must not wrap round
    # to the file's real size and reach the reshape, nor ever be allocated.
    expected = header + math.prod(dims) * dtype.itemsize
    if len(content) != expected:
        problem = "truncated" if len(content) < expected else "trailing bytes in"
        raise DataError(
            f"{problem} IDX file {path}: {len(content)} bytes, expected {expected} "
            f"for shape {list(dims)}; {hint}"
        )
    data = np.frombuffer(content, dtype=dtype, offset=header).reshape(dims)
    return data if dtype.itemsize == 1 else data.astype(dtype.newbyteorder("="))


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """Read the IDX file at ``path`` (gzipped or not); see :func:`parse_idx`."""
    path = Path(path)
    return parse_idx(read_bytes(path), path, expected_magic)


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` (uint8) as IDX, gzipped when ``compress`` (default: when the name ends ``.gz``).

    The inverse of :func:`read_idx`; used by the tests to make small files, and handy for making
    a data set from other sources.
    """
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    content = header + array.tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        # mtime=0: the same array always gives the same bytes (and checksum).
        content = gzip.compress(content, mtime=0)
    path.write_bytes(content)
    return path
