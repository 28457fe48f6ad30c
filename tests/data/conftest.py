"""Small synthetic data files for the data-layer tests: IDX sets and an Omniglot ``chardata.mat``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from dcvbench.data import write_idx


@pytest.fixture
def make_idx_dir(tmp_path: Path) -> Callable[..., dict[str, np.ndarray]]:
    """Factory: write the four IDX files of a tiny MNIST-like set; returns the arrays written.

    ``naming``: ``canonical`` (``train-images-idx3-ubyte.gz``), ``raw`` (no ``.gz``, uncompressed)
    or ``dotted`` (``train-images.idx3-ubyte``, uncompressed).
    """

    def make(
        directory: Path | None = None,
        n_train: int = 12,
        n_test: int = 5,
        naming: str = "canonical",
        seed: int = 0,
    ) -> dict[str, np.ndarray]:
        directory = tmp_path / "idx" if directory is None else directory
        directory.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        arrays = {
            "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
            "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
        }
        for stem, array in arrays.items():
            name = {"canonical": stem + ".gz", "raw": stem, "dotted": stem.replace("-idx", ".idx")}[naming]
            write_idx(directory / name, array)
        arrays["dir"] = directory
        return arrays

    return make


def upright_to_columns(images: np.ndarray) -> np.ndarray:
    """``[N, 28, 28]`` upright images → ``[784, N]`` column-major columns, as chardata.mat stores them."""
    return images.transpose(0, 2, 1).reshape(images.shape[0], 784).T


@pytest.fixture
def make_chardata(tmp_path: Path) -> Callable[..., dict[str, np.ndarray]]:
    """Factory: write a tiny ``chardata.mat``; returns the upright images and alphabet labels written."""

    def make(directory: Path | None = None, n_train: int = 9, n_test: int = 4, **overrides) -> dict:
        directory = tmp_path / "omniglot" if directory is None else directory
        directory.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(1)
        train = rng.random((n_train, 28, 28))  # [N, 28, 28], upright
        train[0] = 0.0
        train[0, 3, :] = 1.0  # a horizontal bar in row 3: shows the orientation
        test = rng.random((n_test, 28, 28))
        train_y = np.arange(n_train) % 50
        test_y = np.arange(n_test) % 50
        content = {
            "data": upright_to_columns(train),
            "testdata": upright_to_columns(test),
            "target": np.eye(50)[train_y].T,  # [50, N] one-hot
            "testtarget": np.eye(50)[test_y].T,
        }
        content.update(overrides)
        scipy.io.savemat(directory / "chardata.mat", content)
        return {"dir": directory, "train": train, "test": test, "train_y": train_y, "test_y": test_y}

    return make
