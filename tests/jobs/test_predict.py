"""``dcvbench predict`` end to end on the embedded data: the command, its runs, their manifests,
resume and reproducibility, and the estimators a two-layer predictor refuses."""

import math
from dataclasses import asdict, replace

import pandas as pd
import pytest
import torch

from dcvbench.checkpoints import CHECKPOINT, load_checkpoint
from dcvbench.cli import main
from dcvbench.config import PredictConfig, normalised_config, predict_config_from_dict
from dcvbench.jobs.predict import run_predict
from dcvbench.results import TIMING_COLUMNS, find_runs, read_manifest, read_trace

ONE_LAYER, TWO_LAYERS = "392V-240H-392V", "392V~240H~240H~392V"
ESTIMATORS = ("rloo", "rloo-dcv", "disarm", "nvil", "concrete", "vimco")
# A tiny run: rows every 5 steps, evaluation and variance at the start and the end (step 10).
TINY_ARGS = [
    "--steps", "10", "--batch-size", "20", "--log-every", "5", "--eval-every", "10", "--var-every", "10",
    "--var-samples", "2", "--eval-samples", "2", "--checkpoint-every", "10", "--device", "cpu",
]  # fmt: skip
TINY = PredictConfig(
    arch=TWO_LAYERS,
    steps=20,
    batch_size=20,
    log_every=5,
    eval_every=10,
    var_every=10,
    var_samples=2,
    eval_samples=2,
    checkpoint_every=10,
    device="cpu",
)


def _without_timing(run_dir) -> pd.DataFrame:
    return read_trace(run_dir).drop(columns=TIMING_COLUMNS)


def _estimators(names) -> list[str]:
    return [arg for name in names for arg in ("--estimator", name)]


@pytest.mark.parametrize("arch", [ONE_LAYER, TWO_LAYERS])
def test_predict_command_trains_every_estimator(arch, tmp_path, capsys):
    code = main(["predict", "--arch", arch, *_estimators(ESTIMATORS), *TINY_ARGS, "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    runs = find_runs(tmp_path)
    manifests = {read_manifest(run)["estimator"]: (run, read_manifest(run)) for run in runs}
    assert sorted(manifests) == sorted(ESTIMATORS)
    for name, (run, manifest) in manifests.items():
        assert (manifest["job"], manifest["arch"], manifest["status"]) == ("predict", arch, "finished")
        trace = read_trace(run)
        assert list(trace["step"]) == [0, 5, 10]
        final = trace["test_bound"].iloc[-1]
        # A lower bound on the log-probability of 392 binary pixels: negative, and finite.
        assert math.isfinite(final) and -1e3 < final < 0, (name, final)
        assert f"{-final:.5g}" in captured.out  # the table prints the test NLL, −test_bound
    assert "predict" in captured.out and "test NLL" in captured.out
    assert all(name in captured.out for name in ESTIMATORS)
    assert f"runs written under {tmp_path}/" in " ".join(captured.out.split())  # however rich wraps


def test_quiet_prints_the_run_directories(tmp_path, capsys):
    args = ["predict", "--arch", ONE_LAYER, "--estimator", "rloo", "--seed", "0", "--seed", "1", *TINY_ARGS]
    assert main([*args, "--out", str(tmp_path), "-q"]) == 0
    captured = capsys.readouterr()
    assert sorted(captured.out.split()) == [str(run) for run in find_runs(tmp_path)]
    assert len(captured.out.split()) == 2 and captured.err == ""


def test_interrupted_run_resumes_to_the_uninterrupted_trace(tmp_path, interrupt_at, capsys):
    # rloo-dcv on two layers: one estimator per layer, each with its α, all restored on resume.
    # Interrupted after step 17: the last row is 15 and the checkpoint 10, so row 15 is written again.
    config = replace(TINY, estimators=("rloo-dcv",))
    (full,) = run_predict(replace(config, out=str(tmp_path / "full")))
    with pytest.raises(KeyboardInterrupt):
        run_predict(replace(config, out=str(tmp_path / "cut")), progress=interrupt_at(17))
    (cut_dir,) = (tmp_path / "cut").iterdir()
    manifest = read_manifest(cut_dir)
    assert (manifest["status"], manifest["last_step"]) == ("interrupted", 15)
    assert load_checkpoint(cut_dir / CHECKPOINT, torch.device("cpu"))["step"] == 10

    assert main(["predict", "--resume", str(cut_dir), "-q"]) == 0
    assert capsys.readouterr().out.split() == [str(cut_dir)]
    manifest = read_manifest(cut_dir)
    assert manifest["status"] == "finished" and manifest["resumes"][0]["from_step"] == 10
    pd.testing.assert_frame_equal(_without_timing(full.path), _without_timing(cut_dir))


def test_same_seed_same_trace(tmp_path):
    config = replace(TINY, estimators=("nvil",), steps=10)
    (a,) = run_predict(replace(config, out=str(tmp_path / "a")))
    (b,) = run_predict(replace(config, out=str(tmp_path / "b")))
    (other,) = run_predict(replace(config, seeds=(1,), out=str(tmp_path / "other")))
    pd.testing.assert_frame_equal(_without_timing(a.path), _without_timing(b.path))
    # A different seed is a different run: the equality above is not that of constant traces.
    assert not _without_timing(a.path)["test_bound"].equals(_without_timing(other.path)["test_bound"])


def test_manifest_says_what_each_estimator_trains_and_how_it_is_scored(tmp_path):
    config = replace(
        TINY, arch=ONE_LAYER, estimators=("rloo", "vimco", "concrete"), steps=5, out=str(tmp_path)
    )
    rloo, vimco, concrete = run_predict(config)
    for summary, objective in ((rloo, "elbo"), (vimco, "iwae"), (concrete, "elbo")):
        manifest = read_manifest(summary.path)
        assert (manifest["job"], manifest["problem"], manifest["objective"]) == (
            "predict",
            "predict",
            objective,
        )
        assert manifest["dataset"] == "mnist-subset" and manifest["arch"] == ONE_LAYER
        assert manifest["evaluation"].startswith("test_bound = log (1/S) Σ_s p(x_lower | h_s), S = 2 hard")
        assert manifest["evaluation"].endswith("the test NLL is its negative")
        assert summary.path.name.startswith(f"predict-mnist-subset-{ONE_LAYER}-{summary.estimator}-k2-seed0-")
        # The manifest's config is the configuration: rebuilt, it is the one the run was given.
        assert predict_config_from_dict(manifest["config"]) == config
        assert normalised_config("predict", manifest["config"]) == asdict(config)
    relaxation = read_manifest(concrete.path)["relaxation"]
    assert (relaxation["posterior_temperature"], relaxation["anneal"]) == (2 / 3, "none")
    assert relaxation["evaluation"] == "discrete model: hard samples"
    assert "relaxation" not in read_manifest(rloo.path)

    iwae = replace(config, estimators=("concrete",), objective="iwae", out=str(tmp_path / "iwae"))
    (summary,) = run_predict(iwae)
    manifest = read_manifest(summary.path)
    assert (manifest["objective"], manifest["config"]["objective"]) == ("iwae", "iwae")
    assert summary.path.name.startswith(f"predict-mnist-subset-{ONE_LAYER}-concrete-iwae-k2-seed0-")
    assert predict_config_from_dict(manifest["config"]) == iwae


@pytest.mark.parametrize("name", ["st", "st-concrete"])
def test_straight_through_needs_one_layer(name, tmp_path, capsys):
    refused = tmp_path / "refused"
    args = ["predict", "--estimator", name, *TINY_ARGS]
    assert main([*args, "--arch", "392V-240H-240H-392V", "--out", str(refused)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dcvbench: error: {name} estimates from ∇_h f alone")
    assert "choose a one-layer arch" in lines[0]
    assert not refused.exists()

    assert main([*args, "--arch", ONE_LAYER, "--out", str(tmp_path / "accepted"), "-q"]) == 0
    (run,) = find_runs(tmp_path / "accepted")
    assert read_manifest(run)["status"] == "finished"
    assert math.isfinite(read_trace(run)["test_bound"].iloc[-1])
