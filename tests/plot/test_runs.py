"""Reading runs: groups, damaged files skipped with a reason, seeds of one configuration."""

import json
import subprocess
import sys

import pytest

from dcvbench.cli import main
from dcvbench.plot import (
    curve_frame,
    load_results,
    plot_results,
    summary_frame,
    variance_frame,
)
from dcvbench.results import ResultsError, Run, table_from_records, trace_parts
from tests.plot.conftest import (
    row_where,
    write_toy,
    write_vae,
)


def test_categorical_runs_are_never_averaged_with_binary_ones(runs, tmp_path):
    for seed in (0, 1):
        write_toy(runs / "categorical", "rloo", seed, latent="categorical")
        write_vae(runs / "categorical", "rloo", seed, latent="categorical")
    records = [
        {"problem": "toy", "latent": "categorical", "classes": 4, "objective": "separable", "dim": 8,
         "target": None, "theta": "random", "estimator": name, "k": 2, "evals": 2, "variance": v,
         "variance_ratio": v / 4.0, "cost_variance": 2 * v, "seed": 0}
        for name, v in (("rloo", 4.0), ("rloo-dcv", 1.0))
    ]  # fmt: skip
    manifest = {"job": "variance", "config": {"theta": "random"}}
    study_root = runs / "categorical"
    with Run.create(study_root, "variance-toy-seed0", {"problem": "toy", "seed": 0}, (), manifest) as run:
        run.write_table("variance.parquet", table_from_records(records))
    results = load_results(runs)
    titles = dict(zip(results.runs["group"], results.runs["title"], strict=True))
    assert titles["toy-categorical-separable-n8-c4-k2"] == "toy separable, 8×4 categorical, K=2"
    assert titles["vae-categorical-mnist-subset-linear-n20-c10-k2"] == (
        "VAE mnist-subset, linear, 20×10 categorical, K=2"
    )
    # The fixture's runs predate categorical latents: they are binary, in their groups as before.
    assert {"toy-separable-d8-k2", "vae-mnist-subset-linear-k2"} <= set(titles)
    curves = curve_frame(results, "grad_var")
    for group in ("toy-separable-d8-k2", "toy-categorical-separable-n8-c4-k2"):
        row = row_where(curves, group=group, estimator="rloo", step=10)
        assert (row["n"], row["seeds"]) == (2, 2)  # two seeds each, never four
    variance = variance_frame(results)
    study = row_where(
        variance, estimator="rloo-dcv", k=2, group="variance-toy-categorical-separable-n8-c4-random"
    )
    assert study["title"] == "variance at π=random: toy separable, 8×4 categorical"
    assert (
        row_where(variance, estimator="rloo-dcv", k=2, group="variance-toy-separable-d8-theta0.7")["n"] == 1
    )
    report = plot_results(study_root, tmp_path / "plots", fmt="svg")
    figures = {figure.path.name for figure in report.figures}
    assert "toy-categorical-separable-n8-c4-k2-grad_var.svg" in figures
    assert "vae-categorical-mnist-subset-linear-n20-c10-k2-test_bound.svg" in figures
    assert "variance-toy-categorical-separable-n8-c4-random-ratio.svg" in figures


def test_binary_runs_written_since_categorical_latents_join_the_old_groups(tmp_path):
    write_toy(tmp_path / "new", "rloo", 0, latent="binary")
    write_vae(tmp_path / "new", "rloo", 0, latent="binary")
    assert set(load_results(tmp_path / "new").runs["group"]) == {
        "toy-separable-d8-k2",
        "vae-mnist-subset-linear-k2",
    }


def test_corrupt_trace_part_is_skipped_and_the_rest_of_the_run_kept(runs):
    run = sorted((runs / "toy").glob("toy-disarm-k2-seed0-*"))[0]
    part = trace_parts(run)[4]  # the row at step 20
    part.write_bytes(b"not parquet at all")
    results = load_results(runs)
    (skipped,) = results.skipped
    assert str(skipped).startswith(f"skipped {part}: unreadable Parquet part")
    assert "\n" not in str(skipped)
    # The rest of that run is still there: its last readable row is step 15.
    curves = curve_frame(results, "objective")
    assert row_where(curves, estimator="disarm", step=20)["n"] == 1
    assert row_where(curves, estimator="disarm", step=15)["n"] == 2


def test_corrupt_manifest_is_skipped(runs):
    run = sorted((runs / "nested" / "vae").glob("vae-rloo-seed1-*"))[0]
    (run / "run.json").write_text('{"run_id": "trunc')
    results = load_results(runs)
    (skipped,) = results.skipped
    assert str(skipped).startswith(f"skipped {run / 'run.json'}: is not readable JSON")
    summary = summary_frame(results)
    assert row_where(summary, group="vae-mnist-subset-linear-k2", estimator="rloo")["seeds"] == 1


def test_seeds_written_before_an_option_existed_are_one_series(tmp_path):
    # plot compares configurations as sweep does: as this version saves them. A seed whose manifest
    # lacks an option added since (its default then) joins the others without a warning; a seed
    # made with another learning rate does not.
    out = tmp_path / "runs"
    argv = ["toy", "--estimator", "rloo", "--seed", "0", "--seed", "1", "--dim", "4", "--steps", "4", "-q"]
    assert main([*argv, "--var-every", "2", "--var-samples", "4", "--device", "cpu", "--out", str(out)]) == 0
    first, second = sorted(out.glob("*/run.json"))
    manifest = json.loads(first.read_text())
    del manifest["config"]["estimator_settings"]["control_lr"]
    first.write_text(json.dumps(manifest))
    assert plot_results(out, tmp_path / "plots").warnings == []
    manifest = json.loads(second.read_text())
    manifest["config"]["lr"] = 0.5
    second.write_text(json.dumps(manifest))
    (warning,) = plot_results(out, tmp_path / "plots2").warnings
    assert "differ in lr" in warning


def test_only_unreadable_runs_is_an_error_and_writes_nothing(tmp_path):
    root = tmp_path / "results"
    run = write_toy(root, "rloo", 0)
    (run / "run.json").write_text("{")
    with pytest.raises(ResultsError, match="no readable dcvbench runs"):
        plot_results(root)
    assert not (root / "plots").exists()


def test_a_run_whose_process_is_gone_is_listed_stale(tmp_path, capsys):
    root = tmp_path / "results"
    write_toy(root, "rloo", 0)
    killed = write_toy(root, "rloo", 1, status="running")
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    manifest = json.loads((killed / "run.json").read_text())
    manifest["process"] = {**manifest["process"], "pid": int(ended.stdout), "pid_started": None}
    (killed / "run.json").write_text(json.dumps(manifest))  # as a SIGKILLed run leaves it: running
    runs = load_results(root).runs
    assert dict(zip(runs["seed"], runs["status"], strict=True)) == {0: "finished", 1: "stale"}
    assert main(["plot", str(root), "--out", str(tmp_path / "figures")]) == 0
    assert "stale" in capsys.readouterr().out  # the summary table's status column
