"""The registry and the IDX-based data sets (MNIST, Fashion-MNIST) on tiny generated files."""

from __future__ import annotations

import dataclasses
import gzip

import numpy as np
import pytest
import torch

from dcvbench.data import (
    DEFAULT_DATASET,
    DataError,
    dataset_info,
    dataset_names,
    default_data_dir,
    load_dataset,
)
from dcvbench.data.idx import write_idx


def test_registry_lists_every_dataset_default_first():
    assert dataset_names() == ["mnist-subset", "mnist", "fashion-mnist", "omniglot"]
    assert dataset_names()[0] == DEFAULT_DATASET
    assert dataset_info("mnist-subset").embedded
    assert not dataset_info("omniglot").embedded
    assert dataset_info("mnist").valid_size == 10_000
    assert dataset_info("omniglot").valid_size == 1_345


def test_unknown_name_lists_valid_names():
    with pytest.raises(DataError, match=r"unknown dataset 'cifar'; choose from: mnist-subset, mnist, "):
        load_dataset("cifar")


@pytest.mark.parametrize("naming", ["canonical", "raw", "dotted"])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_split_first_train_last_valid(make_idx_dir, naming, name):
    arrays = make_idx_dir(naming=naming, n_train=12, n_test=5)
    data = load_dataset(name, arrays["dir"], valid_size=3)
    train_images = arrays["train-images-idx3-ubyte"].reshape(12, 784) / 255.0
    test_images = arrays["t10k-images-idx3-ubyte"].reshape(5, 784) / 255.0
    assert data.name == name
    assert data.sizes == {"train": 9, "valid": 3, "test": 5}
    for split in ("train", "valid", "test"):
        x = data.split(split)
        assert x.dtype == torch.float32 and x.shape[1] == 784
        assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_allclose(data.train.numpy(), train_images[:9], rtol=1e-6)
    np.testing.assert_allclose(data.valid.numpy(), train_images[9:], rtol=1e-6)
    np.testing.assert_allclose(data.test.numpy(), test_images, rtol=1e-6)
    assert data.labels["valid"].tolist() == [9, 0, 1]
    assert data.metadata["sizes"] == data.sizes
    assert len(data.metadata["sources"]) == 4


def test_published_split_on_full_size_files(make_idx_dir):
    """60,000 training rows split 50,000 / 10,000 by default (zeros: fast to write and read)."""
    directory = make_idx_dir()["dir"]
    write_idx(directory / "train-images-idx3-ubyte.gz", np.zeros((60_000, 28, 28), dtype=np.uint8))
    write_idx(directory / "train-labels-idx1-ubyte.gz", np.zeros(60_000, dtype=np.uint8))
    data = load_dataset("mnist", directory)
    assert data.sizes == {"train": 50_000, "valid": 10_000, "test": 5}


def test_default_valid_size_too_large_for_tiny_file(make_idx_dir):
    directory = make_idx_dir(n_train=12)["dir"]
    with pytest.raises(DataError, match=r"valid_size=10000 must lie in \[1, 11\]"):
        load_dataset("mnist", directory)


def test_missing_file_says_what_to_do(make_idx_dir):
    directory = make_idx_dir()["dir"]
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", directory, valid_size=2)
    message = str(info.value)
    assert f"missing {directory / 't10k-labels-idx1-ubyte.gz'}" in message
    assert f"dcvbench data download fashion-mnist --data-dir {directory}" in message
    assert "\n" not in message


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match=r"missing .*train-images-idx3-ubyte\.gz"):
        load_dataset("mnist", tmp_path / "nowhere")


def test_corrupt_file_is_named(make_idx_dir):
    directory = make_idx_dir()["dir"]
    path = directory / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))  # truncated download
    with pytest.raises(DataError, match="truncated IDX file") as info:
        load_dataset("mnist", directory, valid_size=2)
    assert str(path) in str(info.value)


def test_swapped_files_are_caught(make_idx_dir):
    directory = make_idx_dir()["dir"]
    labels = directory / "train-labels-idx1-ubyte.gz"
    images = directory / "train-images-idx3-ubyte.gz"
    images.write_bytes(labels.read_bytes())
    with pytest.raises(DataError, match="unexpected IDX magic 0x00000801") as info:
        load_dataset("mnist", directory, valid_size=2)
    assert str(images) in str(info.value)


def test_label_count_mismatch(make_idx_dir):
    directory = make_idx_dir(n_train=12)["dir"]
    write_idx(directory / "train-labels-idx1-ubyte.gz", np.zeros(11, dtype=np.uint8))
    with pytest.raises(DataError, match=r"has 11 labels but .* has 12 images"):
        load_dataset("mnist", directory, valid_size=2)


def test_wrong_image_size(make_idx_dir):
    directory = make_idx_dir()["dir"]
    write_idx(directory / "t10k-images-idx3-ubyte.gz", np.zeros((5, 27, 27), dtype=np.uint8))
    with pytest.raises(DataError, match=r"holds \[27, 27\] images, expected 28×28"):
        load_dataset("mnist", directory, valid_size=2)


def test_default_data_dir_from_environment(make_idx_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DCVBENCH_DATA_DIR", str(tmp_path / "root"))
    assert default_data_dir("mnist") == tmp_path / "root" / "mnist"
    make_idx_dir(directory=tmp_path / "root" / "mnist")
    assert load_dataset("mnist", valid_size=2).sizes["train"] == 10


def test_dataset_is_frozen_and_offers_mean_image(make_idx_dir):
    data = load_dataset("mnist", make_idx_dir()["dir"], valid_size=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.train = data.valid
    with pytest.raises(TypeError):
        data.labels["train"] = data.labels["test"]
    with pytest.raises(DataError, match="unknown split 'validation'"):
        data.split("validation")
    mean = data.mean_image()  # [784]
    assert mean.shape == (784,)
    torch.testing.assert_close(mean, data.train.mean(0))
    logit = data.mean_logit()
    assert torch.isfinite(logit).all()
    torch.testing.assert_close(torch.sigmoid(logit), mean.clamp(1e-3, 1 - 1e-3))


def test_all_zero_pixels_keep_a_finite_bias(make_idx_dir):
    directory = make_idx_dir()["dir"]
    write_idx(directory / "train-images-idx3-ubyte.gz", np.zeros((12, 28, 28), dtype=np.uint8))
    logit = load_dataset("mnist", directory, valid_size=2).mean_logit(clip=1e-3)
    torch.testing.assert_close(logit, torch.full((784,), float(np.log(1e-3 / (1 - 1e-3)))))
