"""``dcvbench vae --targets``: binarised images (the default) or grey levels as soft Bernoulli targets."""

from __future__ import annotations

from dataclasses import fields, replace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import dcvbench.jobs.trainer
from dcvbench.cli import main
from dcvbench.config import PredictConfig, VaeConfig
from dcvbench.data import binarize, load_dataset
from dcvbench.jobs.trainer import EVAL_SEED, evaluation_data
from dcvbench.jobs.vae import resume_vae, run_vae
from dcvbench.plot.runs import load_results
from dcvbench.problems.vae import VAE
from dcvbench.results import TIMING_COLUMNS, read_manifest, read_trace
from dcvbench.runtime import ConfigError

TINY = VaeConfig.for_protocol(
    "dcv",
    estimators=("rloo",),
    latent_vars=8,
    batch_size=20,
    steps=20,
    log_every=10,
    var_every=10,
    eval_every=10,
    checkpoint_every=10,
    var_samples=4,
    eval_samples=3,
    device="cpu",
)


@pytest.fixture(scope="module")
def dataset():
    return load_dataset("mnist-subset")


def bernoulli_log_likelihood(pixel_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``Σ_p x_p log σ(l_p) + (1 − x_p) log σ(−l_p)``: the Bernoulli log-probability for x ∈ {0, 1}, its
    cross-entropy form (the soft-target objective) for x ∈ [0, 1]."""
    return (x * F.logsigmoid(pixel_logits) + (1 - x) * F.logsigmoid(-pixel_logits)).sum(-1)


def test_the_likelihood_is_bernoulli_on_binary_pixels_and_cross_entropy_on_grey_levels():
    generator = torch.Generator().manual_seed(0)
    model = VAE(8, generator=generator).double()
    b = torch.bernoulli(torch.full((3, 5, 8), 0.5, dtype=torch.float64), generator=generator)  # [3, 5, 8]
    grey = torch.rand(5, 784, generator=generator, dtype=torch.float64)  # [5, 784]
    binary = binarize(grey, generator)  # [5, 784]
    logits = model.decode(b)  # [3, 5, 784]
    on_pixel = torch.where(binary == 1, F.logsigmoid(logits), F.logsigmoid(-logits)).sum(-1)  # log p(x|b)
    torch.testing.assert_close(model.log_likelihood(binary, b), on_pixel)
    torch.testing.assert_close(model.log_likelihood(grey, b), bernoulli_log_likelihood(logits, grey))


def test_evaluation_data_keeps_the_intensities_or_binarises_as_before(dataset):
    kept = evaluation_data(dataset, 20, torch.device("cpu"), "intensities")
    assert torch.equal(kept.test, dataset.test) and torch.equal(kept.valid, dataset.valid)
    assert not torch.isin(kept.snapshot, torch.tensor([0.0, 1.0])).all()
    # The default draws exactly what it drew before targets existed, so old runs score alike.
    generator = torch.Generator().manual_seed(EVAL_SEED)
    test, valid = binarize(dataset.test, generator), binarize(dataset.valid, generator)
    rows = torch.randperm(dataset.train.shape[0], generator=generator)[:20]
    binarized = evaluation_data(dataset, 20, torch.device("cpu"))
    assert torch.equal(binarized.test, test) and torch.equal(binarized.valid, valid)
    assert torch.equal(binarized.snapshot, binarize(dataset.train[rows], generator))


def test_an_intensities_run_trains_on_grey_levels_and_records_it(tmp_path, monkeypatch):
    batches = []
    original = dcvbench.jobs.trainer.train_step

    def recording(model, estimator, x, *args, **kwargs):
        batches.append(x.clone())
        return original(model, estimator, x, *args, **kwargs)

    monkeypatch.setattr(dcvbench.jobs.trainer, "train_step", recording)
    (summary,) = run_vae(replace(TINY, targets="intensities", out=str(tmp_path)))
    assert summary.status == "finished" and "intensities" in summary.path.name
    assert read_manifest(summary.path)["config"]["targets"] == "intensities"
    assert len(batches) == TINY.steps
    assert all(
        ((x >= 0) & (x <= 1)).all() and not torch.isin(x, torch.tensor([0.0, 1.0])).all() for x in batches
    )
    bounds = read_trace(summary.path)["test_bound"].dropna()
    assert len(bounds) == 3 and (bounds < 0).all()  # a finite cross-entropy "bound"


def test_an_intensities_run_resumes_to_the_uninterrupted_trace(tmp_path, interrupt_at):
    config = replace(TINY, targets="intensities")
    (full,) = run_vae(replace(config, out=str(tmp_path / "full")))
    with pytest.raises(KeyboardInterrupt):
        run_vae(replace(config, out=str(tmp_path / "cut")), progress=interrupt_at(15))
    (cut_dir,) = (tmp_path / "cut").iterdir()
    assert resume_vae(cut_dir).status == "finished"
    pd.testing.assert_frame_equal(
        read_trace(full.path).drop(columns=TIMING_COLUMNS), read_trace(cut_dir).drop(columns=TIMING_COLUMNS)
    )


def test_the_two_targets_are_never_one_plot_group(tmp_path):
    run_vae(replace(TINY, steps=1, out=str(tmp_path)))
    run_vae(replace(TINY, steps=1, targets="intensities", out=str(tmp_path)))
    runs = load_results(tmp_path).runs
    runs.index = [read_manifest(path)["config"]["targets"] for path in runs["path"]]
    assert sorted(runs.index) == ["binarized", "intensities"]
    assert runs.loc["binarized", "group"] == "vae-mnist-subset-linear-l8-k2"
    assert runs.loc["intensities", "group"] == "vae-mnist-subset-linear-intensities-l8-k2"
    assert runs.loc["intensities", "title"] == "VAE mnist-subset, linear, intensities, 8 latents, K=2"


def test_bad_targets_are_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown --targets 'grey'; choose from: binarized, intensities"):
        replace(TINY, targets="grey")
    code = main(["vae", "--targets", "grey", "--out", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "unknown --targets 'grey'" in lines[0]
    assert not (tmp_path / "out").exists()


def test_structured_prediction_stays_on_binary_pixels():
    assert "targets" not in {field.name for field in fields(PredictConfig)}
