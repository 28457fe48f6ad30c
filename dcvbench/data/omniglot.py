"""Omniglot 28×28, from ``chardata.mat`` (the file of the IWAE, DisARM and double-CV experiments).

The file holds ``data`` (784 × 24,345 intensities in [0, 1]) and ``testdata`` (784 × 8,070), plus
one-hot alphabet labels ``target`` (50 × 24,345) and ``testtarget``. The published experiments held
out the *last* 1,345 training images for validation.

Orientation: each 784-column is a 28×28 image stored column-major (MATLAB order). We store it
row-major, as the IWAE code's ``reshape_data`` does (per-image transpose), so that
``row.reshape(28, 28)`` draws the character the same way for Omniglot as for MNIST. Code that takes
the columns as they are (e.g. the DisARM code) sees every image transposed; for a fully connected
likelihood the two are the same model, only plots differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from dcvbench.data.dataset import IMAGE_SIDE, PIXELS, Dataset, as_intensities, as_labels, split_off_last
from dcvbench.data.errors import DataError

CHARDATA = "chardata.mat"
VALID_SIZE = 1_345  # the last 1,345 training images, as in the IWAE/DisARM experiments


def column_major_to_rows(columns: np.ndarray) -> np.ndarray:
    """``[784, N]`` column-major images → ``[N, 784]`` row-major images (see the module docstring)."""
    n = columns.shape[1]
    images = columns.T.reshape(n, IMAGE_SIDE, IMAGE_SIDE)  # [N, 28, 28], each transposed
    return images.transpose(0, 2, 1).reshape(n, PIXELS)  # [N, 784], upright, row-major


def alphabet_labels(mat: dict, key: str, n: int) -> np.ndarray | None:
    """Alphabet index per image from the one-hot ``[50, N]`` variable ``key``; ``None`` when absent."""
    onehot = mat.get(key)
    if onehot is None or onehot.ndim != 2 or onehot.shape[1] != n:
        return None  # labels are a convenience, never needed for training
    return np.argmax(onehot, axis=0)


def read_images(mat: dict, key: str, path: Path) -> np.ndarray:
    """The checked ``[784, N]`` variable ``key`` as row-major ``[N, 784]`` images."""
    hint = "delete it and download it again (`dcvbench data download omniglot`)"
    if key not in mat:
        raise DataError(f"no variable {key!r} in {path}; is it the IWAE chardata.mat? {hint}")
    columns = np.asarray(mat[key])
    if columns.ndim != 2 or columns.shape[0] != PIXELS or not np.issubdtype(columns.dtype, np.number):
        raise DataError(
            f"variable {key!r} in {path} is {columns.dtype} {list(columns.shape)}, expected [784, N]; {hint}"
        )
    if not (np.isfinite(columns).all() and columns.min() >= 0.0 and columns.max() <= 1.0):
        raise DataError(f"variable {key!r} in {path} has values outside [0, 1]; {hint}")
    return column_major_to_rows(columns)


def load_omniglot(name: str, data_dir: Path, valid_size: int | None = None) -> Dataset:
    """Load Omniglot from ``data_dir / chardata.mat``.

    Args:
        name: the registry name, used in messages and metadata.
        data_dir: the directory holding ``chardata.mat``.
        valid_size: how many of the *last* training images validate; default 1,345.
    """
    valid_size = VALID_SIZE if valid_size is None else valid_size
    path = data_dir / CHARDATA
    if not path.is_file():
        raise DataError(
            f"missing {path}: run `dcvbench data download {name} --data-dir {data_dir}` or copy the IWAE "
            f"chardata.mat there"
        )
    try:
        mat = scipy.io.loadmat(path, variable_names=["data", "testdata", "target", "testtarget"])
    except Exception as exc:  # scipy raises many types on a corrupt file; all mean the same to a user
        raise DataError(
            f"corrupt .mat file {path} ({type(exc).__name__}): delete it and download it again"
        ) from None
    train = read_images(mat, "data", path)  # [24345, 784]
    test = read_images(mat, "testdata", path)  # [8070, 784]
    train, valid = split_off_last(train, valid_size, str(path))
    labels = {}
    train_y = alphabet_labels(mat, "target", train.shape[0] + valid_size)
    test_y = alphabet_labels(mat, "testtarget", test.shape[0])
    if train_y is not None and test_y is not None:
        labels = {
            "train": as_labels(train_y[: train.shape[0]]),
            "valid": as_labels(train_y[train.shape[0] :]),
            "test": as_labels(test_y),
        }
    return Dataset(
        name=name,
        train=as_intensities(train, 1.0),
        valid=as_intensities(valid, 1.0),
        test=as_intensities(test, 1.0),
        labels=labels,
        metadata={
            "name": name,
            "sources": [str(path)],
            "split": f"train: first {train.shape[0]} of 'data'; valid: last {valid_size}; test: 'testdata'",
            "sizes": {"train": train.shape[0], "valid": valid.shape[0], "test": test.shape[0]},
            "orientation": "column-major 784-columns transposed to row-major rows (IWAE reshape_data)",
        },
    )
