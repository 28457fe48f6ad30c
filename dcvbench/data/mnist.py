"""MNIST and Fashion-MNIST from their four IDX files in a local directory.

Split (the published binary-VAE experiments): the first 50,000 training images train, the last
10,000 validate, the 10,000 ``t10k`` images test. ``valid_size`` moves the boundary (the tests use
tiny files); the validation images are always the *last* ones of the training file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dcvbench.data.dataset import IMAGE_SIDE, Dataset, as_intensities, as_labels, split_off_last
from dcvbench.data.errors import DataError
from dcvbench.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx

# The canonical (gzipped) names, as published and as `download` writes them.
TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
IDX_FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
VALID_SIZE = 10_000  # the last 10,000 of the 60,000 training images


def idx_candidates(canonical: str) -> tuple[str, ...]:
    """Accepted names for one file, in order of preference.

    ``train-images-idx3-ubyte.gz``, then unzipped ``train-images-idx3-ubyte``, then the
    ``train-images.idx3-ubyte`` spelling that some archives (e.g. Kaggle's) use.
    """
    plain = canonical.removesuffix(".gz")
    dotted = plain.replace("-idx", ".idx")
    return canonical, plain, dotted + ".gz", dotted


def find_idx_file(data_dir: Path, canonical: str, name: str) -> Path:
    """The first present file among :func:`idx_candidates`, or a :class:`DataError` saying what to do."""
    for candidate in idx_candidates(canonical):
        path = data_dir / candidate
        if path.is_file():
            return path
    raise DataError(
        f"missing {data_dir / canonical}: run `dcvbench data download {name} --data-dir {data_dir}` "
        f"or copy the four IDX files there (gzipped or not)"
    )


def read_images_and_labels(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``([N, 784] uint8, [N] int64)`` from one pair of IDX files, checked against each other."""
    images = read_idx(images_path, IMAGES_MAGIC)  # [N, 28, 28]
    labels = read_idx(labels_path, LABELS_MAGIC)  # [N]
    if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(
            f"{images_path} holds {list(images.shape[1:])} images, expected 28×28; is it the right file?"
        )
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{labels_path} has {labels.shape[0]} labels but {images_path} has {images.shape[0]} images; "
            f"delete both and download them again"
        )
    return images.reshape(images.shape[0], -1), labels.astype(np.int64)


def load_idx_dataset(name: str, data_dir: Path, valid_size: int | None = None) -> Dataset:
    """Load ``name`` (``mnist`` or ``fashion-mnist``) from the IDX files in ``data_dir``.

    Args:
        name: the registry name, used in messages and metadata.
        data_dir: the directory holding the four files.
        valid_size: how many of the *last* training images validate; default 10,000.

    Intensities are ``byte / 255``.
    """
    valid_size = VALID_SIZE if valid_size is None else valid_size
    paths = [find_idx_file(data_dir, canonical, name) for canonical in IDX_FILES]
    train_x, train_y = read_images_and_labels(paths[0], paths[1])  # [60000, 784], [60000]
    test_x, test_y = read_images_and_labels(paths[2], paths[3])  # [10000, 784], [10000]
    train_x, valid_x = split_off_last(train_x, valid_size, str(paths[0]))
    train_y, valid_y = split_off_last(train_y, valid_size, str(paths[1]))
    return Dataset(
        name=name,
        train=as_intensities(train_x, 255.0),
        valid=as_intensities(valid_x, 255.0),
        test=as_intensities(test_x, 255.0),
        labels={
            "train": as_labels(train_y),
            "valid": as_labels(valid_y),
            "test": as_labels(test_y),
        },
        metadata={
            "name": name,
            "sources": [str(p) for p in paths],
            "split": f"train: first {train_x.shape[0]} of {paths[0].name}; valid: last {valid_size}; "
            f"test: all of {paths[2].name}",
            "sizes": {"train": train_x.shape[0], "valid": valid_x.shape[0], "test": test_x.shape[0]},
        },
    )
