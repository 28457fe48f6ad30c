"""Dynamic binarisation and the resumable batch sampler."""

from __future__ import annotations

import io

import pytest
import torch

from dcvbench.data import BatchSampler, binarize
from dcvbench.data.sampler import pixel_targets


def make_intensities(n: int = 200, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 784, generator=torch.Generator().manual_seed(seed))  # [N, 784]


def test_binarize_is_bernoulli_of_the_intensities():
    x = make_intensities(100).double()  # [100, 784]
    draws = 20
    gen = torch.Generator().manual_seed(0)
    b = torch.stack([binarize(x, gen) for _ in range(draws)])  # [20, 100, 784]
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    assert b.shape == (draws, *x.shape) and b.dtype == x.dtype
    # Overall mean: E[b] = p, Var(mean) = Σ p(1−p) / n².
    count = b.numel()
    se = (draws * (x * (1 - x)).sum()).sqrt() / count
    assert abs(b.mean() - x.mean()) < 5 * se
    # Per intensity band, so a bias that cancels overall would still show.
    for low in torch.arange(0.0, 1.0, 0.1):
        band = (x >= low) & (x < low + 0.1)
        p = x[band]
        hits = b[:, band]
        se = (draws * (p * (1 - p)).sum()).sqrt() / hits.numel()
        assert abs(hits.mean() - p.mean()) < 5 * se


def test_each_draw_resamples_pixels():
    x = torch.full((4, 784), 0.5)
    gen = torch.Generator().manual_seed(0)
    assert not torch.equal(binarize(x, gen), binarize(x, gen))


def test_epochs_visit_every_row_once_then_reshuffle():
    x = make_intensities(10)
    sampler = BatchSampler(x, 3, generator=torch.Generator().manual_seed(0))
    assert sampler.steps_per_epoch == 3 and sampler.epoch == 0
    first = torch.cat([sampler.next_indices() for _ in range(3)])  # [9]
    assert sampler.epoch == 1 and first.unique().numel() == 9
    second = torch.cat([sampler.next_indices() for _ in range(3)])
    assert sampler.epoch == 2 and second.unique().numel() == 9
    assert not torch.equal(first, second)


def test_batches_are_binarised_rows_of_the_split():
    x = torch.zeros(6, 784)
    x[:, :10] = 1.0  # the first 10 pixels always on, the rest always off
    sampler = BatchSampler(x, 4, generator=torch.Generator().manual_seed(0), device="cpu")
    batch = next(iter(sampler))  # [4, 784]
    assert batch.shape == (4, 784) and batch.device.type == "cpu"
    assert torch.equal(batch, x[:4])


def test_same_seed_same_batches():
    x = make_intensities(50)
    a = BatchSampler(x, 20, generator=torch.Generator().manual_seed(3))
    b = BatchSampler(x, 20, generator=torch.Generator().manual_seed(3))
    for _ in range(5):
        assert torch.equal(a.next_batch(), b.next_batch())


@pytest.mark.parametrize("warmup", [0, 1, 2, 5])
def test_state_dict_resumes_exactly(warmup):
    """Checkpoint after ``warmup`` batches (0: before any), resume in a fresh sampler, compare."""
    x = make_intensities(50)
    original = BatchSampler(x, 20, generator=torch.Generator().manual_seed(1))
    for _ in range(warmup):
        original.next_batch()
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)  # tensors and ints only: loads with weights_only
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    expected = [original.next_batch() for _ in range(7)]  # crosses several epoch boundaries
    resumed = BatchSampler(x, 20, generator=torch.Generator().manual_seed(999))
    resumed.load_state_dict(state)
    assert [torch.equal(resumed.next_batch(), e) for e in expected] == [True] * 7
    assert (resumed.epoch, resumed.position) == (original.epoch, original.position)


def test_resume_refuses_other_data_or_batch_size():
    x = make_intensities(50)
    state = BatchSampler(x, 20, generator=torch.Generator()).state_dict()
    with pytest.raises(ValueError, match="saved batch_size=20, this sampler has 10"):
        BatchSampler(x, 10, generator=torch.Generator()).load_state_dict(state)
    with pytest.raises(ValueError, match="saved num_rows=50, this sampler has 40"):
        BatchSampler(x[:40], 20, generator=torch.Generator()).load_state_dict(state)


def test_intensity_batches_are_the_drawn_rows_as_they_are():
    """The rows a sampler with the same seed draws (targets change no permutation), unbinarised."""
    x = make_intensities(50)
    rows = BatchSampler(x, 20, generator=torch.Generator().manual_seed(2))
    sampler = BatchSampler(x, 20, generator=torch.Generator().manual_seed(2), targets="intensities")
    for _ in range(4):  # crosses epoch boundaries
        batch = sampler.next_batch()  # [20, 784]
        assert torch.equal(batch, x[rows.next_indices()])
        assert not torch.isin(batch, torch.tensor([0.0, 1.0])).all()  # grey levels, not 0/1


def test_intensity_sampler_resumes_exactly():
    x = make_intensities(50)
    original = BatchSampler(x, 20, generator=torch.Generator().manual_seed(1), targets="intensities")
    for _ in range(3):
        original.next_batch()
    state = original.state_dict()
    expected = [original.next_batch() for _ in range(5)]
    resumed = BatchSampler(x, 20, generator=torch.Generator().manual_seed(9), targets="intensities")
    resumed.load_state_dict(state)
    assert [torch.equal(resumed.next_batch(), e) for e in expected] == [True] * 5


def test_pixel_targets():
    x = make_intensities(10)
    assert torch.equal(
        pixel_targets(x, "binarized", torch.Generator().manual_seed(0)),
        binarize(x, torch.Generator().manual_seed(0)),
    )
    generator = torch.Generator().manual_seed(0)
    before = generator.get_state()
    assert pixel_targets(x, "intensities", generator) is x
    assert torch.equal(generator.get_state(), before)  # no draws: the stream is left to the others
    with pytest.raises(ValueError, match="unknown targets 'grey'; choose from: binarized, intensities"):
        pixel_targets(x, "grey", generator)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown targets 'grey'; choose from: binarized, intensities"):
        BatchSampler(make_intensities(5), 2, generator=torch.Generator(), targets="grey")
    with pytest.raises(ValueError, match=r"batch_size must lie in \[1, 5\] \(the number of rows\), got 6"):
        BatchSampler(make_intensities(5), 6, generator=torch.Generator())
    with pytest.raises(ValueError, match="float"):
        BatchSampler(torch.zeros(5, 784, dtype=torch.uint8), 2, generator=torch.Generator())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_generator_gives_the_same_batches_on_any_device():
    x = make_intensities(50)
    on_cpu = BatchSampler(x, 20, generator=torch.Generator().manual_seed(0), device="cpu")
    on_gpu = BatchSampler(x, 20, generator=torch.Generator().manual_seed(0), device="cuda")
    for _ in range(4):
        batch = on_gpu.next_batch()
        assert batch.is_cuda
        assert torch.equal(batch.cpu(), on_cpu.next_batch())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generator_samples_on_the_gpu_and_resumes():
    x = make_intensities(50)
    sampler = BatchSampler(x, 20, generator=torch.Generator(device="cuda").manual_seed(0))
    assert sampler.next_batch().is_cuda
    state = sampler.state_dict()
    expected = [sampler.next_batch() for _ in range(4)]
    resumed = BatchSampler(x, 20, generator=torch.Generator(device="cuda"))
    resumed.load_state_dict(state)
    assert all(torch.equal(resumed.next_batch(), e) for e in expected)
