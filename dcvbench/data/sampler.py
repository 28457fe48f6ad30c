"""Dynamic binarisation and minibatches with a resumable state.

Dynamic binarisation (Salakhutdinov & Murray 2008; the IWAE, DisARM and double-CV experiments):
every time an image is drawn, each pixel is resampled as ``Bernoulli(intensity)``, so the model
never sees the same binary image twice; it regularises, and the mean binarised image equals the
mean intensity.

The paper of ReinMax (Liu et al. 2023), after the Gumbel-softmax code of Jang et al., instead uses
the grey levels themselves as the Bernoulli likelihood's soft targets: ``targets="intensities"``.
Its "bound" is then no log-likelihood of a discrete model, and not comparable with binarised ones.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

# What the models are trained and scored on: dynamically binarised images (the default), or the
# grey levels in [0, 1] as soft targets of the Bernoulli likelihood (the ReinMax paper's choice).
TARGETS = ("binarized", "intensities")


def binarize(intensities: Tensor, generator: torch.Generator) -> Tensor:
    """``Bernoulli(intensities)`` per pixel: 0/1 in the input's dtype, shape and device.

    ``generator`` must live on the input's device.
    """
    return torch.bernoulli(intensities, generator=generator)


def pixel_targets(intensities: Tensor, targets: str, generator: torch.Generator) -> Tensor:
    """The images a model sees, from ``intensities``: binarised (``"binarized"``: :func:`binarize`, drawing
    from ``generator``), or the intensities themselves (``"intensities"``: drawing nothing)."""
    if targets == "binarized":
        return binarize(intensities, generator)
    if targets == "intensities":
        return intensities
    raise ValueError(f"unknown targets {targets!r}; choose from: {', '.join(TARGETS)}")


class BatchSampler:
    """Shuffled epochs of dynamically binarised minibatches (or of intensities: ``targets``), drawn
    without replacement.

    Each epoch is a fresh permutation of the rows; batches are consecutive slices of it. When fewer
    than ``batch_size`` rows remain, they are skipped and a new epoch starts, so every batch has the
    same size (the rows skipped differ from epoch to epoch).

    Randomness (permutations and pixels) comes only from ``generator``, on *its* device; the
    intensities are copied there once. A CPU generator therefore gives the same batches whatever
    ``device`` the batches are sent to; a CUDA generator keeps everything on the GPU. The sampler
    owns the generator: do not draw from it elsewhere, since :meth:`state_dict` includes its state
    and :meth:`load_state_dict` restores it.

    >>> sampler = BatchSampler(data.train, 100, generator=torch.Generator().manual_seed(0), device="cuda")
    >>> x = sampler.next_batch()  # [100, 784] of 0.0/1.0 on cuda
    >>> state = sampler.state_dict()  # save with the checkpoint; load_state_dict(state) resumes exactly
    """

    def __init__(
        self,
        intensities: Tensor,
        batch_size: int,
        *,
        generator: torch.Generator,
        device: torch.device | str | None = None,
        targets: str = "binarized",
    ) -> None:
        """
        Args:
            intensities: ``[N, P]`` floats in ``[0, 1]`` (a split of a :class:`Dataset`).
            batch_size: rows per batch, ``1 ≤ batch_size ≤ N``.
            generator: the sampler's own random stream.
            device: where batches are returned; default the generator's device.
            targets: ``"binarized"`` (each batch binarised afresh) or ``"intensities"`` (the rows as
                they are; the generator then draws only the permutations).
        """
        if intensities.ndim != 2 or not intensities.is_floating_point():
            got = f"{intensities.dtype} {list(intensities.shape)}"
            raise ValueError(f"intensities must be a float [N, P] tensor, got {got}")
        n = intensities.shape[0]
        if not 1 <= batch_size <= n:
            raise ValueError(f"batch_size must lie in [1, {n}] (the number of rows), got {batch_size}")
        if targets not in TARGETS:
            raise ValueError(f"unknown targets {targets!r}; choose from: {', '.join(TARGETS)}")
        self.generator = generator
        self.data = intensities.to(generator.device)  # [N, P]
        self.batch_size = batch_size
        self.targets = targets
        self.device = torch.device(device) if device is not None else self.data.device
        # The epoch's permutation starts empty, so the first batch starts epoch 1.
        self.permutation = torch.empty(0, dtype=torch.long, device=self.data.device)  # [N] once drawn
        self.position = 0
        self.epoch = 0

    @property
    def num_rows(self) -> int:
        return int(self.data.shape[0])

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch: ``N // batch_size``."""
        return self.num_rows // self.batch_size

    def next_indices(self) -> Tensor:
        """Row indices of the next batch, ``[batch_size]`` (int64, on the generator's device)."""
        if self.position + self.batch_size > self.permutation.shape[0]:
            self.permutation = torch.randperm(
                self.num_rows, generator=self.generator, device=self.data.device
            )
            self.position = 0
            self.epoch += 1
        indices = self.permutation[self.position : self.position + self.batch_size]  # [B]
        self.position += self.batch_size
        return indices

    def next_batch(self) -> Tensor:
        """The next minibatch on ``device``, ``[batch_size, P]``: binarised afresh (0.0/1.0), or the
        rows' intensities (``targets="intensities"``)."""
        intensities = self.data[self.next_indices()]  # [B, P]
        return pixel_targets(intensities, self.targets, self.generator).to(self.device)  # [B, P]

    def __iter__(self) -> BatchSampler:
        return self

    def __next__(self) -> Tensor:
        """Endless: one batch per step; count epochs with :attr:`epoch`."""
        return self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: tensors (on CPU) and ints only."""
        return {
            "permutation": self.permutation.cpu().clone(),  # [N], or [0] before the first batch
            "position": self.position,
            "epoch": self.epoch,
            "generator": self.generator.get_state().clone(),  # uint8, on CPU whatever the device
            "num_rows": self.num_rows,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the data and batch size must be those it was saved with."""
        for key in ("num_rows", "batch_size"):
            if int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"cannot resume: saved {key}={int(state[key])}, this sampler has {getattr(self, key)}"
                )
        self.permutation = state["permutation"].to(device=self.data.device, dtype=torch.long)
        self.position = int(state["position"])
        self.epoch = int(state["epoch"])
        self.generator.set_state(state["generator"].cpu())
