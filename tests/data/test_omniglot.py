"""Omniglot from a tiny generated ``chardata.mat``: split, orientation, labels, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch

from dcvbench.data import DataError, load_dataset


def test_split_orientation_and_labels(make_chardata):
    made = make_chardata(n_train=9, n_test=4)
    data = load_dataset("omniglot", made["dir"], valid_size=2)
    assert data.sizes == {"train": 7, "valid": 2, "test": 4}
    assert data.train.dtype == torch.float32
    # Rows are upright and row-major: the bar drawn in row 3 comes back in row 3.
    first = data.train[0].reshape(28, 28)
    assert first[3].eq(1).all() and first.sum() == 28
    np.testing.assert_allclose(data.train.numpy(), made["train"][:7].reshape(7, 784), rtol=1e-6)
    np.testing.assert_allclose(data.valid.numpy(), made["train"][7:].reshape(2, 784), rtol=1e-6)
    np.testing.assert_allclose(data.test.numpy(), made["test"].reshape(4, 784), rtol=1e-6)
    assert data.labels["valid"].tolist() == made["train_y"][7:].tolist()
    assert data.labels["test"].tolist() == made["test_y"].tolist()


def test_labels_are_optional(make_chardata):
    made = make_chardata()
    mat = made["dir"] / "chardata.mat"
    content = scipy.io.loadmat(mat)
    scipy.io.savemat(mat, {"data": content["data"], "testdata": content["testdata"]})
    data = load_dataset("omniglot", made["dir"], valid_size=2)
    assert dict(data.labels) == {}


def test_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("omniglot", tmp_path)
    message = str(info.value)
    assert f"missing {tmp_path / 'chardata.mat'}" in message
    assert "dcvbench data download omniglot" in message


def test_corrupt_file(tmp_path):
    (tmp_path / "chardata.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\x00" * 50)
    with pytest.raises(DataError, match=r"corrupt \.mat file") as info:
        load_dataset("omniglot", tmp_path)
    assert str(tmp_path / "chardata.mat") in str(info.value)


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ({"testdata": np.zeros((5, 784))}, r"'testdata' .* expected \[784, N\]"),
        ({"data": np.full((784, 9), 2.0)}, r"'data' .* values outside \[0, 1\]"),
    ],
)
def test_bad_variables(make_chardata, override, words):
    made = make_chardata(**override)
    with pytest.raises(DataError, match=words):
        load_dataset("omniglot", made["dir"], valid_size=2)


def test_missing_variable(tmp_path):
    scipy.io.savemat(tmp_path / "chardata.mat", {"data": np.zeros((784, 3))})
    with pytest.raises(DataError, match="no variable 'testdata'"):
        load_dataset("omniglot", tmp_path, valid_size=1)
