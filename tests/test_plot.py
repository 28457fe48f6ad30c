"""``dcvbench plot``: the data behind each figure, the files written, and robustness to bad input.

Runs are written with :class:`dcvbench.results.Run` exactly as the jobs write them, with metric
values chosen so that means and standard errors over seeds can be worked out by hand.
"""

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from dcvbench.cli import main
from dcvbench.estimators import estimator_names
from dcvbench.plot import (
    BASELINE,
    MEASUREMENTS,
    RUNS,
    combine,
    curve_frame,
    draw_curves,
    estimator_color,
    load_results,
    metrics_of,
    plot_results,
    summary_frame,
    time_frame,
    variance_frame,
)
from dcvbench.results import ResultsError, Run, prepare_output_root, table_from_records

TOY_METRICS = ("objective", "grad_var", "bias_max_z", "bias_mean_z", "alpha", "sec_per_step")
VAE_METRICS = ("train_elbo", "test_bound", "valid_bound", "grad_var_ema", "grad_var_resample", "alpha")
VAE_METRICS = (*VAE_METRICS, "logit_var_resample", "sec_per_step")
TOY_ESTIMATORS = {"rloo": 1e-8, "rloo-dcv": 1e-10, "disarm": 2e-8}  # grad_var scale per estimator
VAE_ESTIMATORS = {"rloo": 0.02, "rloo-dcv": 0.01}
REPO = Path(__file__).resolve().parents[1]


def toy_values(estimator: str, seed: int, step: int) -> dict[str, float | None]:
    """The metrics a synthetic toy run logs at ``step`` (grad_var every 10 steps, as a job would)."""
    return {
        "objective": 0.25 + 1e-4 * step * (1 + seed) * (2 if estimator == "rloo-dcv" else 1),
        "grad_var": TOY_ESTIMATORS[estimator] * (1 + seed) / (1 + step) if step % 10 == 0 else None,
        "alpha": -0.01 * step * (1 + seed) if estimator == "rloo-dcv" else None,
        "sec_per_step": None if step == 0 else 0.001 * (1 + seed) * (2 if estimator == "disarm" else 1),
    }


def vae_values(estimator: str, seed: int, step: int) -> dict[str, float | None]:
    evaluated = step % 100 == 0
    return {
        "train_elbo": None
        if step == 0
        else -200.0 + step / 10 + seed + (1 if estimator == "rloo-dcv" else 0),
        "test_bound": -210.0 + step / 10 - seed if evaluated else None,
        "grad_var_resample": VAE_ESTIMATORS[estimator] * (1 + seed) if evaluated else None,
        "grad_var_ema": None if step == 0 else 2 * VAE_ESTIMATORS[estimator],
        "alpha": -0.5 * step / 100 if estimator == "rloo-dcv" else None,
        "sec_per_step": None if step == 0 else 0.01 + 0.001 * seed,
    }


def write_toy(
    root: Path, estimator: str, seed: int, steps=(0, 5, 10, 15, 20), status=None, latent: str | None = None
) -> Path:
    """A toy run; ``latent`` given: as written since categorical latents (else as before them)."""
    identity = {"problem": "toy", "estimator": estimator, "k": 2, "seed": seed, "grad_var_method": "resample"}
    problem = {"objective": "separable", "dim": 8, "target": 0.499}
    if latent is not None:
        identity["latent"] = latent
        problem |= {"latent": latent, "classes": 4 if latent == "categorical" else None}
    config = {"problem": problem, "k": 2, "steps": 20, "lr": 0.01}
    manifest = {"job": "toy", "objective_direction": "maximize", "config": config}
    with Run.create(
        prepare_output_root(root), f"toy-{estimator}-k2-seed{seed}", identity, TOY_METRICS, manifest
    ) as run:
        for step in steps:
            run.log(step, **toy_values(estimator, seed, step))
            run.flush()  # one part per row: lets a test damage a single part
        if status:
            run.finish(status)
    return run.path


def write_vae(root: Path, estimator: str, seed: int, latent: str | None = None) -> Path:
    """A VAE run; ``latent`` given: as written since categorical latents (``latent`` was the bits)."""
    identity = {"problem": "vae", "estimator": estimator, "k": 2, "seed": seed}
    config = {"dataset": "mnist-subset", "arch": "linear", "protocol": "dcv", "latent": 200, "steps": 100}
    if latent is not None:
        identity["latent"] = latent
        categorical = latent == "categorical"
        config |= {
            "latent": latent,
            "latent_vars": 20 if categorical else 200,
            "classes": 10 if categorical else None,
        }
    manifest = {"job": "vae", "dataset": "mnist-subset", "arch": "linear", "config": config}
    with Run.create(
        prepare_output_root(root), f"vae-{estimator}-seed{seed}", identity, VAE_METRICS, manifest
    ) as run:
        for step in range(0, 101, 25):
            run.log(step, **vae_values(estimator, seed, step))
    return run.path


def write_variance(root: Path, seed: int = 3) -> Path:
    records = [
        {
            "problem": "toy",
            "objective": "separable",
            "dim": 8,
            "target": 0.499,
            "theta": "0.7",
            "estimator": name,
            "k": k,
            "evals": k,
            "unbiased": True,
            "variance": variance / k,
            "variance_ratio": variance / base,
            "cost_variance": variance,
            "seed": seed,
        }
        for k in (2, 4)
        for name, variance, base in (("rloo", 4.0, 4.0), ("rloo-dcv", 1.0, 4.0), ("disarm", 3.0, 4.0))
    ]
    manifest = {"job": "variance", "config": {"theta": "0.7", "ks": [2, 4]}}
    with Run.create(
        prepare_output_root(root), f"variance-toy-seed{seed}", {"problem": "toy", "seed": seed}, (), manifest
    ) as run:
        run.write_table("variance.parquet", table_from_records(records))
    return run.path


@pytest.fixture
def runs(tmp_path) -> Path:
    """Toy (3 estimators × 2 seeds, rloo-dcv seed 1 interrupted at step 10), VAE, a variance study."""
    root = tmp_path / "results"
    root.mkdir()
    for estimator in TOY_ESTIMATORS:
        for seed in (0, 1):
            if estimator == "rloo-dcv" and seed == 1:
                write_toy(root / "toy", estimator, seed, steps=(0, 5, 10), status="interrupted")
            else:
                write_toy(root / "toy", estimator, seed)
    for estimator in VAE_ESTIMATORS:
        for seed in (0, 1):
            write_vae(root / "nested" / "vae", estimator, seed)
    write_variance(root / "variance")
    return root


EXPECTED_FIGURES = {
    "toy-separable-d8-k2-grad_var.png",
    "toy-separable-d8-k2-objective.png",
    "toy-separable-d8-k2-alpha.png",
    "toy-separable-d8-k2-sec_per_step.png",
    "vae-mnist-subset-linear-k2-grad_var_resample.png",
    "vae-mnist-subset-linear-k2-grad_var_ema.png",
    "vae-mnist-subset-linear-k2-train_elbo.png",
    "vae-mnist-subset-linear-k2-test_bound.png",
    "vae-mnist-subset-linear-k2-alpha.png",
    "vae-mnist-subset-linear-k2-sec_per_step.png",
    "variance-toy-separable-d8-theta0.7-ratio.png",
    "variance-toy-separable-d8-theta0.7-cost.png",
}


def _row(frame: pd.DataFrame, **where) -> pd.Series:
    mask = pd.Series(True, index=frame.index)
    for column, value in where.items():
        mask &= frame[column] == value
    (index,) = frame.index[mask]
    return frame.loc[index]


def test_curves_are_mean_and_standard_error_over_seeds(runs):
    results = load_results(runs)
    curves = curve_frame(results, "grad_var")
    row = _row(curves, group="toy-separable-d8-k2", estimator="rloo", step=10)
    seed0, seed1 = 1e-8 * 1 / 11, 1e-8 * 2 / 11
    assert row["mean"] == pytest.approx((seed0 + seed1) / 2)
    assert row["se"] == pytest.approx(abs(seed1 - seed0) / 2)  # s.d. |a−b|/√2, over √2
    assert row["n"] == 2 and row["seeds"] == 2 and row["finished"]
    # Steps where grad_var was not measured are absent, not zero.
    assert set(curves.loc[curves["estimator"] == "rloo", "step"]) == {0, 10, 20}

    objective = curve_frame(results, "objective")
    row = _row(objective, group="toy-separable-d8-k2", estimator="disarm", step=15)
    values = [0.25 + 1e-4 * 15 * 1, 0.25 + 1e-4 * 15 * 2]
    assert row["mean"] == pytest.approx(sum(values) / 2)
    assert row["se"] == pytest.approx(pd.Series(values).std() / math.sqrt(2))


def test_an_interrupted_run_is_drawn_as_far_as_it_went_and_marked(runs):
    curves = curve_frame(load_results(runs), "alpha")
    curves = curves[curves["group"] == "toy-separable-d8-k2"]
    dcv = curves[curves["estimator"] == "rloo-dcv"].set_index("step")
    assert set(curves["estimator"]) == {"rloo-dcv"}  # α only where an estimator logs it
    assert dcv.loc[10, "n"] == 2 and dcv.loc[20, "n"] == 1  # seed 1 stopped at step 10
    assert math.isnan(dcv.loc[20, "se"]) and dcv.loc[20, "mean"] == pytest.approx(-0.2)
    assert not dcv["finished"].any()
    assert dcv["statuses"].iloc[0] == "finished 1, interrupted 1"


def test_vae_curves_and_time(runs):
    results = load_results(runs)
    bound = curve_frame(results, "test_bound")
    row = _row(bound, group="vae-mnist-subset-linear-k2", estimator="rloo", step=100)
    assert row["mean"] == pytest.approx((-200.0 + -201.0) / 2) and row["se"] == pytest.approx(0.5)
    timing = time_frame(results)
    vae = _row(timing, group="vae-mnist-subset-linear-k2", estimator="rloo-dcv")
    assert vae["mean"] == pytest.approx((0.010 + 0.011) / 2) and vae["se"] == pytest.approx(0.0005)


def test_variance_study_frame(runs):
    variance = variance_frame(load_results(runs))
    row = _row(variance, estimator="rloo-dcv", k=4)
    assert row["group"] == "variance-toy-separable-d8-theta0.7"
    assert row["variance_ratio_mean"] == pytest.approx(0.25)
    assert row["cost_variance_mean"] == pytest.approx(1.0) and row["n"] == 1
    assert math.isnan(row["variance_ratio_se"])  # one study: no standard error


def test_vae_variance_study_is_its_own_group(tmp_path):
    records = [
        {"problem": "vae", "dataset": "mnist-subset", "arch": "linear", "checkpoint_run": "vae-x",
         "checkpoint_step": 500, "estimator": name, "k": 2, "evals": 2, "variance": v,
         "variance_ratio": v / 0.02, "cost_variance": 2 * v, "seed": 0}
        for name, v in (("rloo", 0.02), ("rloo-dcv", 0.01))
    ]  # fmt: skip
    manifest = {"job": "variance", "config": {"checkpoint": "vae-x/checkpoint.pt"}}
    root = prepare_output_root(tmp_path / "results")
    with Run.create(root, "variance-vae-seed0", {"problem": "vae", "seed": 0}, (), manifest) as run:
        run.write_table("variance.parquet", table_from_records(records))
    report = plot_results(root)
    row = _row(report.variance, estimator="rloo-dcv")
    assert row["group"] == "variance-vae-mnist-subset-linear-step500"
    assert row["variance_ratio_mean"] == pytest.approx(0.5)
    assert {path.name for path in report.figures} == {
        "variance-vae-mnist-subset-linear-step500-ratio.png",
        "variance-vae-mnist-subset-linear-step500-cost.png",
    }


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
        row = _row(curves, group=group, estimator="rloo", step=10)
        assert (row["n"], row["seeds"]) == (2, 2)  # two seeds each, never four
    variance = variance_frame(results)
    study = _row(variance, estimator="rloo-dcv", k=2, group="variance-toy-categorical-separable-n8-c4-random")
    assert study["title"] == "variance at π=random: toy separable, 8×4 categorical"
    assert _row(variance, estimator="rloo-dcv", k=2, group="variance-toy-separable-d8-theta0.7")["n"] == 1
    figures = {path.name for path in plot_results(study_root, tmp_path / "plots", fmt="svg").figures}
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


def test_plot_results_writes_every_figure_and_the_summary(runs, tmp_path):
    report = plot_results(runs, fmt="svg")  # svg: no rasterising, the quickest format to test with
    assert report.out_dir == runs / "plots"
    assert {path.name for path in report.figures} == {
        name.replace(".png", ".svg") for name in EXPECTED_FIGURES
    }
    assert all(path.stat().st_size > 0 for path in report.figures)
    assert report.skipped == [] and report.warnings == []

    summary = pd.read_csv(runs / "plots" / "summary.csv")
    rloo = _row(summary, group="toy-separable-d8-k2", estimator="rloo")
    assert rloo["seeds"] == 2 and rloo["statuses"] == "finished"
    finals = [0.25 + 1e-4 * 20 * 1, 0.25 + 1e-4 * 20 * 2]
    assert rloo["objective_mean"] == pytest.approx(sum(finals) / 2)
    assert rloo["objective_se"] == pytest.approx(abs(finals[1] - finals[0]) / 2)
    assert rloo["var_ratio_rloo"] == pytest.approx(1.0)
    disarm = _row(summary, group="toy-separable-d8-k2", estimator="disarm")
    assert disarm["var_ratio_rloo"] == pytest.approx(2.0)  # final grad_var is 2e-8 vs 1e-8, per seed
    assert disarm["sec_per_step_mean"] == pytest.approx((0.002 + 0.004) / 2)
    dcv = _row(summary, group="toy-separable-d8-k2", estimator="rloo-dcv")
    assert dcv["statuses"] == "finished 1, interrupted 1"
    assert (dcv["last_step_min"], dcv["last_step_max"]) == (10, 20)
    vae = _row(summary, group="vae-mnist-subset-linear-k2", estimator="rloo-dcv")
    assert vae["grad_var_metric"] == "grad_var_resample"
    assert vae["var_ratio_rloo"] == pytest.approx(0.5)
    assert vae["train_elbo_mean"] == pytest.approx(((-190.0 + 1) + (-190.0 + 2)) / 2)

    markdown = (runs / "plots" / "summary.md").read_text()
    assert (
        "\n## toy-separable-d8-k2\n" in markdown and "\n## variance-toy-separable-d8-theta0.7\n" in markdown
    )
    assert "| rloo-dcv | 2 | finished 1, interrupted 1 | 10–20 |" in markdown


def test_cli_plot_prints_the_table_and_figures(runs, tmp_path, capsys):
    out = tmp_path / "figures"
    assert main(["plot", str(runs / "toy"), "--out", str(out), "--format", "pdf"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "rloo-dcv" in captured.out and "4 figures" in captured.out
    toy = {name.replace(".png", ".pdf") for name in EXPECTED_FIGURES if name.startswith("toy-")}
    assert {path.name for path in out.glob("*.pdf")} == toy


def test_corrupt_trace_part_is_skipped_and_the_rest_of_the_run_kept(runs):
    run = sorted((runs / "toy").glob("toy-disarm-k2-seed0-*"))[0]
    part = run / "trace" / "part-00004.parquet"  # the row at step 20
    part.write_bytes(b"not parquet at all")
    results = load_results(runs)
    (skipped,) = results.skipped
    assert str(skipped).startswith(f"skipped {part}: unreadable Parquet part")
    assert "\n" not in str(skipped)
    # The rest of that run is still there: its last readable row is step 15.
    curves = curve_frame(results, "objective")
    assert _row(curves, estimator="disarm", step=20)["n"] == 1
    assert _row(curves, estimator="disarm", step=15)["n"] == 2


def test_corrupt_manifest_is_skipped(runs):
    run = sorted((runs / "nested" / "vae").glob("vae-rloo-seed1-*"))[0]
    (run / "run.json").write_text('{"run_id": "trunc')
    results = load_results(runs)
    (skipped,) = results.skipped
    assert str(skipped).startswith(f"skipped {run / 'run.json'}: is not readable JSON")
    summary = summary_frame(results)
    assert _row(summary, group="vae-mnist-subset-linear-k2", estimator="rloo")["seeds"] == 1


def test_cli_reports_each_skipped_file_in_one_line(tmp_path, capsys):
    root = tmp_path / "results"
    good = write_toy(root, "rloo", 0)
    bad_manifest = write_toy(root, "rloo", 1) / "run.json"
    bad_manifest.write_text("{")
    bad_part = good / "trace" / "part-00004.parquet"
    bad_part.write_bytes(b"PAR1 truncated")
    out = tmp_path / "figures"
    assert main(["plot", str(root), "--out", str(out), "-q"]) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2, lines
    assert any(line.startswith(f"dcvbench: skipped {bad_manifest}: is not readable JSON") for line in lines)
    assert any(line.startswith(f"dcvbench: skipped {bad_part}: unreadable Parquet part") for line in lines)
    assert (out / "toy-separable-d8-k2-objective.png").exists()


@pytest.mark.parametrize("make", ["empty", "missing", "only-junk"])
def test_no_runs_is_one_line_and_exit_code_2(tmp_path, capsys, make):
    root = tmp_path / "results"
    if make != "missing":
        root.mkdir()
    if make == "only-junk":
        (root / "notes.txt").write_text("no runs here")
    code = main(["plot", str(root)])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dcvbench: error:"), captured.err
    assert "Traceback" not in captured.err
    assert ("no dcvbench runs under" if make != "missing" else "is not a directory") in lines[0]
    assert not (root / "plots").exists()  # nothing written where there is nothing to plot


def test_only_unreadable_runs_is_an_error_and_writes_nothing(tmp_path):
    root = tmp_path / "results"
    run = write_toy(root, "rloo", 0)
    (run / "run.json").write_text("{")
    with pytest.raises(ResultsError, match="no readable dcvbench runs"):
        plot_results(root)
    assert not (root / "plots").exists()


def test_bad_format_and_output_inside_a_run_are_usage_errors(runs, capsys):
    assert main(["plot", str(runs), "--format", "jpeg"]) == 2
    assert "--format must be one of png, pdf, svg" in capsys.readouterr().err
    run = next((runs / "toy").iterdir())
    assert main(["plot", str(runs), "--out", str(run / "plots")]) == 2
    assert "inside the run directory" in capsys.readouterr().err
    assert not (run / "plots").exists()


def test_baseline_runs_are_overlaid_dashed_in_the_same_colours(runs, tmp_path):
    reference = tmp_path / "reference"
    shutil.copytree(runs / "toy", reference / "toy")
    write_toy(reference / "other", "rloo", 0)  # a second rloo seed 0: the newer one is kept
    results = combine(load_results(runs), load_results(reference, BASELINE))
    (warning,) = results.warnings
    assert warning.startswith("toy-separable-d8-k2 rloo seed 0 (baseline): several runs, using the newest")
    curves = curve_frame(results, "grad_var")
    toy = curves[curves["group"] == "toy-separable-d8-k2"]
    assert set(toy["source"]) == {RUNS, BASELINE}
    base = _row(toy, source=BASELINE, estimator="rloo", step=10)
    assert base["n"] == 2  # the repeated seed 0 counts once
    grad_var = next(metric for metric in MEASUREMENTS if metric.column == "grad_var")
    fig = draw_curves(toy, grad_var, "toy")
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert lines["rloo (baseline)"].get_linestyle() == "--"
    assert lines["rloo"].get_linestyle() == "-"
    assert lines["rloo (baseline)"].get_color() == lines["rloo"].get_color()
    assert "rloo-dcv † (interrupted 1 of 2)" in lines

    report = plot_results(runs / "toy", tmp_path / "figures", baseline=reference)
    summary = report.summary
    assert list(summary.loc[summary["source"] == BASELINE, "estimator"]) == ["rloo", "rloo-dcv", "disarm"]
    assert {path.name for path in report.figures} == {n for n in EXPECTED_FIGURES if n.startswith("toy-")}


def test_estimator_colours_are_fixed_and_distinct():
    colours = [estimator_color(name) for name in estimator_names()]
    assert len(set(colours)) == len(colours)
    assert estimator_color("rloo") == estimator_color("rloo")
    assert estimator_color("not-registered") == estimator_color("not-registered")


def test_summary_of_the_synthetic_runs_lists_every_estimator(runs):
    summary = summary_frame(load_results(runs))
    assert list(summary.loc[summary["group"] == "toy-separable-d8-k2", "estimator"]) == [
        "rloo",
        "rloo-dcv",
        "disarm",
    ]  # registry order


def test_plot_baselines_produces_every_figure(tmp_path, capsys):
    baselines = REPO / "baselines"
    if not any(baselines.rglob("run.json")):
        pytest.skip("no committed baselines")
    out = tmp_path / "figures"
    assert main(["plot", str(baselines), "--out", str(out), "-q"]) == 0
    assert capsys.readouterr().err == ""
    expected = {
        "toy-separable-d200-k2-grad_var.png",
        "toy-separable-d200-k2-objective.png",
        "toy-separable-d200-k2-alpha.png",
        "toy-separable-d200-k2-sec_per_step.png",
        "vae-mnist-subset-linear-k2-grad_var_resample.png",
        "vae-mnist-subset-linear-k2-grad_var_ema.png",
        "vae-mnist-subset-linear-k2-train_elbo.png",
        "vae-mnist-subset-linear-k2-test_bound.png",
        "vae-mnist-subset-linear-k2-alpha.png",
        "vae-mnist-subset-linear-k2-sec_per_step.png",
        "variance-toy-separable-d200-theta0.7-ratio.png",
        "variance-toy-separable-d200-theta0.7-cost.png",
    }
    drawn = {path.name for path in out.glob("*.png")}
    assert expected <= drawn
    # The Concrete paper's runs (baselines/concrete-paper): each group's bound, and the temperature study.
    for group in (
        "vae-mnist-subset-200H~200H~784V-elbo-k2",
        "predict-mnist-subset-392V-240H-240H-392V-iwae-k5",
    ):
        assert f"{group}-test_bound.png" in drawn
    assert {
        "vae-mnist-subset-linear-elbo-k2-temperature-study.png",
        "predict-mnist-subset-392V-240H-392V-elbo-k2-temperature-study.png",
    } <= drawn
    assert {"summary.md", "summary.csv", "variance-summary.csv"} <= {path.name for path in out.iterdir()}


def test_an_estimators_stats_are_drawn_from_the_trace_columns(tmp_path):
    # nvil reports its baseline: a column of its trace, so a figure, with no list of nvil's metrics.
    root = prepare_output_root(tmp_path / "runs")
    identity = {"problem": "toy", "estimator": "nvil", "k": 2, "seed": 0, "grad_var_method": "resample"}
    config = {"problem": {"objective": "separable", "dim": 8, "target": 0.499}, "k": 2, "steps": 20}
    manifest = {"job": "toy", "objective_direction": "maximize", "config": config}
    columns = ("objective", "baseline", "bias_max_z", "sec_per_step")
    with Run.create(root, "toy-nvil-k2-seed0", identity, columns, manifest) as run:
        for step in (0, 10, 20):
            run.log(step, objective=0.25, baseline=0.1 * step, bias_max_z=1.0, sec_per_step=0.01)
    assert [metric.column for metric in metrics_of(columns)] == ["objective", "baseline"]
    report = plot_results(root, tmp_path / "figures")
    assert {path.name for path in report.figures} == {
        "toy-separable-d8-k2-objective.png",
        "toy-separable-d8-k2-baseline.png",  # an estimator's stat
        "toy-separable-d8-k2-sec_per_step.png",
    }  # bias_max_z is a diagnostic of the variance measurement: in the trace, not drawn


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
