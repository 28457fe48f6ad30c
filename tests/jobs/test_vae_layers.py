"""The VAE job with two stochastic layers (the Concrete paper's ``200H-200H-784V`` and
``200H~200H~784V``) end to end on the embedded data: what each estimator trains, what a checkpoint
holds, resume and reproducibility, and the configurations refused."""

import re
from dataclasses import replace

import pandas as pd
import pytest
import torch

from dcvbench.checkpoints import CHECKPOINT, load_checkpoint
from dcvbench.config import VaeConfig
from dcvbench.jobs.vae import resume_vae, run_vae
from dcvbench.results import TIMING_COLUMNS, read_manifest, read_trace
from dcvbench.runtime import ConfigError

CPU = torch.device("cpu")
ARCHS = ("200H-200H-784V", "200H~200H~784V")
# Two layers of 200 bits (the width is the architecture's, not an option): small batches, few steps,
# evaluation at the start and the end only.
LAYERED = VaeConfig.for_protocol(
    "dcv",
    arch=ARCHS[0],
    batch_size=20,
    steps=20,
    log_every=10,
    var_every=20,
    eval_every=20,
    checkpoint_every=10,
    var_samples=2,
    eval_samples=2,
    device="cpu",
)


def _without_timing(run_dir) -> pd.DataFrame:
    return read_trace(run_dir).drop(columns=TIMING_COLUMNS)


@pytest.mark.parametrize("arch", ARCHS)
def test_layer_by_layer_and_whole_chain_estimators_train_two_layers(arch, tmp_path):
    config = replace(LAYERED, arch=arch, estimators=("rloo-dcv", "concrete", "vimco"), out=str(tmp_path))
    assert config.latent_vars == 200 and config.depth == 2
    dcv, concrete, vimco = run_vae(config)
    for summary, objective in ((dcv, "elbo"), (concrete, "elbo"), (vimco, "iwae")):
        assert summary.status == "finished"
        manifest = read_manifest(summary.path)
        assert (manifest["arch"], manifest["objective"]) == (arch, objective)
        assert manifest["config"]["latent_vars"] == 200
        trace = read_trace(summary.path)
        evaluated = trace.dropna(subset=["test_bound"])
        assert list(evaluated["step"]) == [0, 20]
        for column in ("test_bound", "valid_bound"):
            assert evaluated[column].between(-1e4, 0).all(), (summary.estimator, column)
        assert trace["train_elbo"].iloc[1:].notna().all()
    assert read_manifest(concrete.path)["relaxation"]["objective"] == (
        "relaxed ELBO (Concrete densities, every stochastic layer relaxed)"
    )

    # rloo-dcv is applied layer by layer: the second layer has its own estimator, and its own α.
    state = load_checkpoint(dcv.path / CHECKPOINT, CPU)
    (upper,) = state["upper_estimators"]
    first, second = state["estimator"]["alpha"], upper["alpha"]
    assert second.dtype == torch.float64 and torch.isfinite(second)
    assert second != 0.0  # α starts at 0: the upper layer's was learned, and saved
    assert second != first  # …on its own layer's estimates, not a copy of the first layer's
    # …and its trace has both: the first layer's α as `alpha`, the second's as `alpha_layer2`, the
    # value each last row's estimate used (the checkpoint's is the one after that step's update).
    trace = read_trace(dcv.path)
    assert trace["alpha_layer2"].iloc[0] == 0.0 and trace["alpha_layer2"].notna().all()
    assert (trace["alpha_layer2"] != trace["alpha"]).iloc[1:].all()
    assert not any(column.endswith("_layer2") for column in read_trace(vimco.path).columns)
    # concrete and vimco estimate the whole chain at once: there are no upper estimators to save.
    for summary in (concrete, vimco):
        assert load_checkpoint(summary.path / CHECKPOINT, CPU)["upper_estimators"] == []


def test_the_k_sample_objective_is_named_in_the_run_and_its_manifest(tmp_path):
    config = replace(LAYERED, arch=ARCHS[1], estimators=("concrete",), objective="iwae", out=str(tmp_path))
    (summary,) = run_vae(config)
    assert summary.status == "finished"
    assert summary.path.name.startswith("vae-mnist-subset-200H~200H~784V-concrete-iwae-k2-seed0-")
    manifest = read_manifest(summary.path)
    assert (manifest["objective"], manifest["config"]["objective"]) == ("iwae", "iwae")
    assert manifest["relaxation"]["objective"] == (
        "relaxed K-sample bound (Concrete densities, every stochastic layer relaxed)"
    )
    assert read_trace(summary.path).dropna(subset=["test_bound"])["test_bound"].between(-1e4, 0).all()


def test_interrupted_two_layer_run_resumes_to_the_uninterrupted_trace(tmp_path, interrupt_at):
    # Rows every 5 steps, checkpoints every 10: interrupted after step 17, the run's last row is 15 and
    # its checkpoint 10, so the resumed run writes the row of step 15 again.
    config = replace(LAYERED, estimators=("rloo-dcv",), log_every=5, var_every=10, eval_every=10)
    (full,) = run_vae(replace(config, out=str(tmp_path / "full")))
    with pytest.raises(KeyboardInterrupt):
        run_vae(replace(config, out=str(tmp_path / "cut")), progress=interrupt_at(17))
    (cut_dir,) = (tmp_path / "cut").iterdir()
    manifest = read_manifest(cut_dir)
    assert (manifest["status"], manifest["last_step"]) == ("interrupted", 15)
    assert load_checkpoint(cut_dir / CHECKPOINT, CPU)["step"] == 10

    resumed = resume_vae(cut_dir)
    assert resumed.status == "finished"
    assert read_manifest(cut_dir)["resumes"][0]["from_step"] == 10
    pd.testing.assert_frame_equal(_without_timing(full.path), _without_timing(cut_dir))
    # The trace's α is the first layer's; the second layer's α, restored from the checkpoint, ends
    # where the uninterrupted run's does.
    ends = [load_checkpoint(path / CHECKPOINT, CPU) for path in (full.path, cut_dir)]
    assert [end["step"] for end in ends] == [20, 20]
    assert torch.equal(ends[0]["upper_estimators"][0]["alpha"], ends[1]["upper_estimators"][0]["alpha"])
    for name, weights in ends[0]["model"].items():
        assert torch.equal(weights, ends[1]["model"][name]), name


def test_same_seed_same_two_layer_trace(tmp_path):
    config = replace(LAYERED, arch=ARCHS[1], estimators=("disarm",), steps=10, var_every=10, eval_every=10)
    (a,) = run_vae(replace(config, out=str(tmp_path / "a")))
    (b,) = run_vae(replace(config, out=str(tmp_path / "b")))
    (other,) = run_vae(replace(config, seeds=(1,), out=str(tmp_path / "other")))
    pd.testing.assert_frame_equal(_without_timing(a.path), _without_timing(b.path))
    # A different seed is a different run: the equality above is not that of constant traces.
    assert not _without_timing(a.path)["test_bound"].equals(_without_timing(other.path)["test_bound"])


@pytest.mark.parametrize("arch", [*ARCHS, "200H-784V", "200H~784V"])
def test_the_latents_next_to_the_pixels_are_the_architectures(arch):
    assert VaeConfig(arch=arch).latent_vars == 200
    assert VaeConfig(arch=arch, latent_vars=200).latent_vars == 200  # agreeing: accepted
    with pytest.raises(
        ConfigError, match=re.escape(f"--arch {arch} has 200 latents next to the pixels, but --latent")
    ):
        VaeConfig(arch=arch, latent_vars=100)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"latent": "categorical"}, "--arch 200H-200H-784V has 2 stochastic layers: binary latents only"),
        ({"kl": "analytic"}, "--kl analytic is for one stochastic layer; --arch 200H-200H-784V has 2"),
        (
            {"objective": "iwae", "estimators": ("rloo",)},
            "rloo does not train --objective iwae; it trains elbo",
        ),
        (
            {"objective": "iwae", "estimators": ("concrete", "rloo-dcv")},
            "rloo-dcv does not train --objective iwae; it trains elbo",
        ),
        (
            {"objective": "elbo", "estimators": ("vimco",)},
            "vimco does not train --objective elbo; it trains iwae",
        ),
    ],
)
def test_two_layer_configurations_refused(settings, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        VaeConfig(arch=ARCHS[0], **settings)
