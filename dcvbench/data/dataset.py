"""The in-memory data set: three splits of grey-level intensities in [0, 1], one image per row."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dcvbench.data.errors import DataError

IMAGE_SIDE = 28
PIXELS = IMAGE_SIDE * IMAGE_SIDE  # 784: every data set here is 28×28, flattened row-major
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True, eq=False)
class Dataset:
    """Intensities of one data set, split three ways; binarised later, batch by batch (or used as they
    are: :data:`~dcvbench.data.sampler.TARGETS`).

    Attributes:
        name: the registry name (``mnist-subset``, ``mnist``, …).
        train, valid, test: ``[N_split, 784]`` float32 CPU tensors of intensities in ``[0, 1]``; each
            row is a 28×28 image flattened row-major (``row.reshape(28, 28)`` shows it).
        labels: split name → ``[N_split]`` int64 class labels (digit, garment or alphabet); empty
            where the source has none. Not used for training; kept to check splits and for plots.
        metadata: JSON-ready facts for a run manifest: source files, split rule, split sizes.
    """

    name: str
    train: Tensor
    valid: Tensor
    test: Tensor
    labels: Mapping[str, Tensor] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split in SPLITS:
            x = getattr(self, split)
            if x.dtype != torch.float32 or x.ndim != 2 or x.shape[1] != PIXELS:
                raise DataError(
                    f"{self.name}: split {split!r} must be float32 [N, {PIXELS}], "
                    f"got {x.dtype} {list(x.shape)}"
                )
        # Frozen in spirit as well as in form: callers cannot add or swap entries.
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    def split(self, name: str) -> Tensor:
        """The intensities of split ``name`` (``train``, ``valid`` or ``test``), ``[N_split, 784]``."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; choose from: {', '.join(SPLITS)}")
        return getattr(self, name)

    @property
    def sizes(self) -> dict[str, int]:
        """Number of images per split."""
        return {split: int(self.split(split).shape[0]) for split in SPLITS}

    def mean_image(self) -> Tensor:
        """Mean training intensity per pixel, ``[784]``: the expected mean of the binarised training
        images too, so one mean serves both targets (binarised images or the intensities themselves).

        The DisARM protocol subtracts it from the encoder's input.
        """
        return self.train.mean(0)  # [784]

    def mean_logit(self, clip: float = 1e-3) -> Tensor:
        """``logit`` of :meth:`mean_image`, ``[784]``: the DisARM protocol's initial decoder output bias.

        Border pixels are never on, so the mean is clipped to ``[clip, 1 − clip]`` first (the DisARM
        code's 0.001) to keep the bias finite.
        """
        return torch.logit(self.mean_image().clamp(clip, 1.0 - clip))  # [784]


def split_off_last(x: np.ndarray, valid_size: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into ``(x[:-valid_size], x[-valid_size:])``: the published validation rule.

    ``what`` names the source in the error raised when nothing would be left for training.
    """
    n = x.shape[0]
    if not 0 < valid_size < n:
        raise DataError(f"valid_size={valid_size} must lie in [1, {n - 1}] for {what} ({n} training images)")
    return x[: n - valid_size], x[n - valid_size :]


def as_intensities(x: np.ndarray, scale: float) -> Tensor:
    """``x / scale`` as a float32 tensor with its own (writable) memory."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32) / np.float32(scale))


def as_labels(y: np.ndarray) -> Tensor:
    """Labels as an int64 tensor with its own memory."""
    return torch.from_numpy(np.array(y, dtype=np.int64))
