"""A classifier with a binary stochastic bottleneck, on the embedded digits (no download).

Run it as it stands (docs/examples.md):

    dcvbench variance --objective docs/examples/digit_bottleneck.py:make_problem
    dcvbench train --objective docs/examples/digit_bottleneck.py:make_model --estimator rloo-dcv

An image ``x`` (784 grey levels of ``mnist-subset``) is encoded to the logits ``η = enc(x)`` of ``D``
independent bits, ``b ~ Bernoulli(σ(η))`` ``[B, D]``, and a linear classifier reads the digit from the
bits; the loss of a sample is the cross-entropy ``f(b) = −log softmax(W b + w_0)_y``. The encoder is
trained by the estimator's gradient of ``E_q[f]`` with respect to ``η``; the classifier by the
pathwise gradient of ``f``. No exact gradient is given: ``2^D`` configurations per image.

``make_problem()`` gives ``f`` and the logits of a freshly initialised model (seeded) on a batch of
held-out digits, for ``dcvbench variance`` / ``dcvbench.compare``; ``make_model()`` gives the model,
which ``dcvbench train`` / ``dcvbench.train`` optimise, reporting the held-out accuracy and loss of
the deterministic classifier at the most probable bits ``b = 1[η > 0]``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from dcvbench.data import Dataset, load_dataset

BITS = 16  # D
HIDDEN = 128
DIGITS = 10
PROBLEM_SEED = 7  # the weights and the held-out batch that make_problem measures at


@functools.cache
def digits() -> Dataset:
    """The 5,000 embedded digits with their labels (4,000 train / 500 valid / 500 test)."""
    return load_dataset("mnist-subset")


class BottleneckClassifier(nn.Module):
    """``x → enc(x) = η [B, D] → b ~ Bernoulli(σ(η)) → W b + w_0 [B, 10]``."""

    def __init__(self, bits: int = BITS, batch_size: int = 50):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(784, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, bits))
        self.classifier = nn.Linear(bits, DIGITS)
        self.batch_size = batch_size
        data = digits()
        self.register_buffer("train_x", data.train)  # [N, 784]
        self.register_buffer("train_y", data.labels["train"])  # [N]
        self.register_buffer("test_x", data.test)  # [500, 784]
        self.register_buffer("test_y", data.labels["test"])  # [500]

    def logits(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, _ = batch
        return self.encoder(x)  # [B, D]

    def objective(self, batch: tuple[Tensor, Tensor]):
        _, y = batch
        return functools.partial(self.loss, y=y)

    def loss(self, b: Tensor, y: Tensor) -> Tensor:
        """``f``: bits ``b [K, B, D]`` (hard, or relaxed in [0, 1]) → cross-entropy ``[K, B]``."""
        log_probs = self.classifier(b).log_softmax(-1)  # [K, B, 10]
        return -log_probs.gather(-1, y.expand(b.shape[0], -1).unsqueeze(-1)).squeeze(-1)

    def batches(self, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            rows = torch.randint(self.train_x.shape[0], (self.batch_size,), generator=generator)
            yield self.train_x[rows.to(self.train_x.device)], self.train_y[rows.to(self.train_y.device)]

    def evaluate(self) -> dict[str, float]:
        b = (self.encoder(self.test_x) > 0).to(self.test_x.dtype)  # [500, D]: the most probable bits
        loss = self.loss(b.unsqueeze(0), self.test_y)[0]  # [500]
        correct = self.classifier(b).argmax(-1) == self.test_y
        return {"accuracy": float(correct.float().mean()), "loss": float(loss.mean())}


def make_model(bits: int = BITS, batch_size: int = 50) -> BottleneckClassifier:
    return BottleneckClassifier(bits, batch_size)


def make_problem(bits: int = BITS, rows: int = 32):
    """``(f, logits [B, D])`` of a model initialised from a fixed seed, on ``rows`` test digits."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(PROBLEM_SEED)
        model = BottleneckClassifier(bits).requires_grad_(False)
    batch = model.test_x[:rows], model.test_y[:rows]
    return model.objective(batch), model.logits(batch)
