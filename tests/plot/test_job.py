"""``dcvbench plot`` as a whole: the files written, the terminal, usage errors, baselines."""

import shutil

import pandas as pd
import pytest

from dcvbench.cli import main
from dcvbench.cli.plot import FORMATS as CLI_FORMATS
from dcvbench.plot import (
    BASELINE,
    FORMATS,
    MEASUREMENTS,
    RUNS,
    combine,
    curve_frame,
    draw_curves,
    estimator_style,
    load_results,
    metrics_of,
    plot_results,
)
from dcvbench.results import Run, prepare_output_root, table_from_records, trace_parts
from tests.plot.conftest import (
    EXPECTED_FIGURES,
    row_where,
    write_toy,
)


def test_plot_results_writes_every_figure_and_the_summary(runs, tmp_path):
    report = plot_results(runs, fmt="svg")  # svg: no rasterising, the quickest format to test with
    assert report.out_dir == runs / "plots"
    assert {figure.path.name for figure in report.figures} == {
        name.replace(".png", ".svg") for name in EXPECTED_FIGURES
    }
    assert all(figure.path.stat().st_size > 0 for figure in report.figures)
    assert report.skipped == [] and report.warnings == []

    summary = pd.read_csv(runs / "plots" / "summary.csv")
    rloo = row_where(summary, group="toy-separable-d8-k2", estimator="rloo")
    assert rloo["seeds"] == 2 and rloo["statuses"] == "finished"
    finals = [0.25 + 1e-4 * 20 * 1, 0.25 + 1e-4 * 20 * 2]
    assert rloo["objective_mean"] == pytest.approx(sum(finals) / 2)
    assert rloo["objective_se"] == pytest.approx(abs(finals[1] - finals[0]) / 2)
    assert rloo["var_ratio_rloo"] == pytest.approx(1.0)
    disarm = row_where(summary, group="toy-separable-d8-k2", estimator="disarm")
    assert disarm["var_ratio_rloo"] == pytest.approx(2.0)  # final grad_var is 2e-8 vs 1e-8, per seed
    assert disarm["sec_per_step_median_mean"] == pytest.approx((0.002 + 0.004) / 2)
    dcv = row_where(summary, group="toy-separable-d8-k2", estimator="rloo-dcv")
    assert dcv["statuses"] == "finished 1, interrupted 1"
    assert (dcv["last_step_min"], dcv["last_step_max"]) == (10, 20)
    vae = row_where(summary, group="vae-mnist-subset-linear-k2", estimator="rloo-dcv")
    assert vae["grad_var_metric"] == "grad_var_resample"
    assert vae["var_ratio_rloo"] == pytest.approx(0.5)
    assert vae["train_elbo_mean"] == pytest.approx(((-190.0 + 1) + (-190.0 + 2)) / 2)

    markdown = (runs / "plots" / "summary.md").read_text()
    assert (
        "\n## toy-separable-d8-k2\n" in markdown and "\n## variance-toy-separable-d8-theta0.7\n" in markdown
    )
    assert "| rloo-dcv | 2 | finished 1, interrupted 1 | 10–20 |" in markdown


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
    row = row_where(report.variance, estimator="rloo-dcv")
    assert row["group"] == "variance-vae-mnist-subset-linear-step500"
    assert row["variance_ratio_mean"] == pytest.approx(0.5)
    assert {figure.path.name for figure in report.figures} == {
        "variance-vae-mnist-subset-linear-step500-ratio.png",
        "variance-vae-mnist-subset-linear-step500-cost.png",
    }


def test_cli_plot_prints_the_table_and_figures(runs, tmp_path, capsys):
    out = tmp_path / "figures"
    assert main(["plot", str(runs / "toy"), "--out", str(out), "--format", "pdf"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "rloo-dcv" in captured.out and "4 figures" in captured.out
    toy = {name.replace(".png", ".pdf") for name in EXPECTED_FIGURES if name.startswith("toy-")}
    assert {path.name for path in out.glob("*.pdf")} == toy


def test_cli_reports_each_skipped_file_in_one_line(tmp_path, capsys):
    root = tmp_path / "results"
    good = write_toy(root, "rloo", 0)
    bad_manifest = write_toy(root, "rloo", 1) / "run.json"
    bad_manifest.write_text("{")
    bad_part = trace_parts(good)[4]
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


def test_bad_format_and_output_inside_a_run_are_usage_errors(runs, capsys):
    assert main(["plot", str(runs), "--format", "jpeg"]) == 2
    assert "--format must be one of png, pdf, svg" in capsys.readouterr().err
    run = next((runs / "toy").iterdir())
    assert main(["plot", str(runs), "--out", str(run / "plots")]) == 2
    assert "inside the run directory" in capsys.readouterr().err
    assert not (run / "plots").exists()


def test_baseline_runs_are_overlaid_faded_in_the_same_styles(runs, tmp_path):
    reference = tmp_path / "reference"
    shutil.copytree(runs / "toy", reference / "toy")
    write_toy(reference / "other", "rloo", 0)  # a second rloo seed 0: the newer one is kept
    results = combine(load_results(runs), load_results(reference, BASELINE))
    (warning,) = results.warnings
    assert warning.startswith("toy-separable-d8-k2 rloo seed 0 (baseline): several runs, using the newest")
    curves = curve_frame(results, "grad_var")
    toy = curves[curves["group"] == "toy-separable-d8-k2"]
    assert set(toy["source"]) == {RUNS, BASELINE}
    base = row_where(toy, source=BASELINE, estimator="rloo", step=10)
    assert base["n"] == 2  # the repeated seed 0 counts once
    grad_var = next(metric for metric in MEASUREMENTS if metric.column == "grad_var")
    fig = draw_curves(toy, grad_var, "toy")
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    for name in ("rloo", "disarm"):
        main, faded = lines[name], lines[f"{name} (baseline)"]
        assert (faded.get_color(), faded.get_linestyle()) == (main.get_color(), main.get_linestyle())
        assert main.get_alpha() is None and faded.get_alpha() < 1
    assert lines["rloo"].get_color() == estimator_style("rloo").color
    assert "rloo-dcv † (interrupted 1 of 2)" in lines

    report = plot_results(runs / "toy", tmp_path / "figures", baseline=reference)
    summary = report.summary
    assert list(summary.loc[summary["source"] == BASELINE, "estimator"]) == ["rloo", "rloo-dcv", "disarm"]
    assert {figure.path.name for figure in report.figures} == {
        n for n in EXPECTED_FIGURES if n.startswith("toy-")
    }


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
    assert {figure.path.name for figure in report.figures} == {
        "toy-separable-d8-k2-objective.png",
        "toy-separable-d8-k2-baseline.png",  # an estimator's stat
        "toy-separable-d8-k2-sec_per_step.png",
    }  # bias_max_z is a diagnostic of the variance measurement: in the trace, not drawn


def test_the_cli_offers_the_formats_plot_writes():
    assert CLI_FORMATS == FORMATS  # kept apart so that --help does not import matplotlib
