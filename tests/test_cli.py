"""The command line, end to end: Typer's test runner for normal use, ``main`` for usage errors."""

import dataclasses
import subprocess
import sys

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from dcvbench.cli import app, main, options
from dcvbench.config import ToyConfig, ToyProblem, VaeConfig
from dcvbench.estimators import default_settings, estimator_names, estimator_options
from dcvbench.estimators.options import Option, positive
from dcvbench.results import find_runs, read_manifest, read_table, read_trace

runner = CliRunner()
SMALL_TOY = ["toy", "--dim", "8", "--steps", "20", "--var-every", "10", "--var-samples", "100"]


def test_estimators_lists_the_registry():
    result = runner.invoke(app, ["estimators"])
    assert result.exit_code == 0
    for name in estimator_names():
        assert name in result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 2}
    assert "binary, categorical" in rows["rloo-dcv"] and "categorical" not in rows["disarm"]


def test_estimators_of_one_latent_type():
    result = runner.invoke(app, ["estimators", "--latent", "categorical"])
    assert result.exit_code == 0
    listed = [line.split("│")[1].strip() for line in result.output.splitlines() if line.count("│") > 2]
    assert [name for name in listed if name] == estimator_names("categorical")
    assert "Gumbel-softmax" in result.output  # the categorical version's own description


def test_toy_end_to_end(tmp_path):
    result = runner.invoke(app, [*SMALL_TOY, "--device", "cpu", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    runs = find_runs(tmp_path)
    assert len(runs) == 4  # the default estimators
    assert "vs rloo" in result.output
    assert all(len(read_trace(run)) == 3 for run in runs)


def test_toy_quiet_prints_only_run_directories(tmp_path):
    args = [*SMALL_TOY, "--estimator", "rloo", "--seed", "1", "--seed", "2", "--out", str(tmp_path), "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(result.output.split()) == sorted(str(run) for run in find_runs(tmp_path))


def test_categorical_toy_end_to_end(tmp_path):
    args = ["toy", "--latent", "categorical", "--classes", "3", "--dim", "6", "--steps", "10"]
    args += ["--var-every", "10", "--var-samples", "100", "--device", "cpu", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    runs = find_runs(tmp_path)
    estimators = sorted(read_manifest(run)["estimator"] for run in runs)
    assert estimators == sorted(["rloo", "rloo-dcv", "concrete", "exact-baseline"])  # the default
    assert {read_manifest(run)["latent"] for run in runs} == {"categorical"}
    assert "N=6 categorical, C=3" in result.output and "vs rloo" in result.output


def test_variance_categorical_call_from_the_issue(tmp_path):
    args = "variance --problem toy --latent categorical --classes 4 --dim 50 --theta random --k 2 --k 4"
    args += f" --estimator rloo --estimator rloo-dcv --samples 2000 --device cpu --out {tmp_path}"
    result = runner.invoke(app, args.split())
    assert result.exit_code == 0, result.output
    (run,) = find_runs(tmp_path)
    table = read_table(run / "variance.parquet")
    assert list(zip(table["estimator"], table["k"], strict=True)) == [
        ("rloo", 2),
        ("rloo-dcv", 2),
        ("rloo", 4),
        ("rloo-dcv", 4),
    ]
    assert table["variance_ratio"].notna().all() and set(table["alpha_source"].dropna()) == {"optimal"}
    assert (set(table["latent"]), set(table["classes"]), set(table["dim"])) == ({"categorical"}, {4}, {50})
    assert "variance at π=random: N=50 categorical, C=4" in result.output


def test_variance_exact_call_from_the_issue(tmp_path):
    args = "variance --problem toy --dim 200 --target 0.499 --theta 0.7 --k 2 --k 4"
    args += " --estimator rloo --estimator rloo-dcv --estimator disarm --alpha -0.005 --samples 2000"
    args += f" --seed 3 --out {tmp_path}"
    result = runner.invoke(app, args.split())
    assert result.exit_code == 0, result.output
    (run,) = find_runs(tmp_path)
    table = read_table(run / "variance.parquet")
    assert len(table) == 6
    assert set(table["alpha"].dropna()) == {-0.005}


def test_data_list_and_the_embedded_set_needs_no_download():
    listing = runner.invoke(app, ["data", "list"])
    assert listing.exit_code == 0
    for name in ("mnist-subset", "mnist", "fashion-mnist", "omniglot"):
        assert name in listing.output
    embedded = runner.invoke(app, ["data", "download", "mnist-subset"])
    assert embedded.exit_code == 0
    assert "nothing to download" in embedded.output


def test_data_download_failure_is_one_line(tmp_path, capsys):
    # Port 9 (discard) on the loopback address: refused at once, no traffic leaves the machine.
    args = [
        "data",
        "download",
        "mnist",
        "--data-dir",
        str(tmp_path / "mnist"),
        "--base-url",
        "http://127.0.0.1:9/",
    ]
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("dcvbench: error: could not fetch")
    assert not list((tmp_path / "mnist").glob("*.gz"))


def test_vae_end_to_end_small(tmp_path):
    args = "vae --estimator rloo --latent-vars 8 --batch-size 20 --steps 10 --log-every 5 --eval-every 10"
    args += f" --var-every 10 --var-samples 4 --eval-samples 2 --device cpu --out {tmp_path}"
    result = runner.invoke(app, args.split())
    assert result.exit_code == 0, result.output
    (run,) = find_runs(tmp_path)
    assert list(read_trace(run)["step"]) == [0, 5, 10]
    assert "test bound" in result.output


def test_vae_relaxation_options_reach_the_run(tmp_path):
    args = "vae --estimator concrete --latent-vars 8 --batch-size 20 --steps 10 --log-every 5"
    args += " --eval-every 10 --var-every 10 --var-samples 4 --eval-samples 2 --device cpu -q"
    args += " --temperature 0.9 --prior-temperature 0.7 --kl relaxed --anneal exp --anneal-rate 0.05"
    args += f" --anneal-floor 0.6 --out {tmp_path}"
    result = runner.invoke(app, args.split())
    assert result.exit_code == 0, result.output
    (run,) = find_runs(tmp_path)
    config = read_manifest(run)["config"]
    assert config["estimator_settings"]["temperature"] == 0.9
    assert (config["prior_temperature"], config["kl"]) == (0.7, "relaxed")
    assert (config["anneal"], config["anneal_rate"], config["anneal_floor"]) == ("exp", 0.05, 0.6)
    relaxation = read_manifest(run)["relaxation"]
    assert (
        relaxation["objective"] == "relaxed ELBO (Concrete densities)"
        and relaxation["prior_temperature"] == 0.7
    )
    temperatures = read_trace(run)["temperature"].tolist()
    assert temperatures[0] == 0.9 and temperatures[1] < 0.9 and temperatures[2] == 0.6  # at the floor


def test_concurrent_invocations_into_one_out_write_separate_complete_runs(tmp_path):
    # The same command twice at once (same name, same seed, most likely the same second): each run
    # gets its own directory, and each trace is whole.
    args = ["toy", "--dim", "8", "--steps", "200", "--var-samples", "100", "--estimator", "rloo-dcv", "-q"]
    command = [sys.executable, "-c", "from dcvbench.cli import main; main()", *args, "--out", str(tmp_path)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    printed = [process.communicate(timeout=120)[0].strip() for process in processes]
    assert [process.returncode for process in processes] == [0, 0]
    runs = find_runs(tmp_path)
    assert sorted(printed) == sorted(map(str, runs)) and len(runs) == 2
    assert [read_manifest(run)["status"] for run in runs] == ["finished", "finished"]
    first, second = (read_trace(run).drop(columns=["run_id", "wall_s", "sec_per_step"]) for run in runs)
    assert len(first) == 21  # steps 0, 10, …, 200
    pd.testing.assert_frame_equal(first, second)


def job_params(job: str) -> dict:
    return {param.name: param for param in typer.main.get_command(app).commands[job].params}


@pytest.mark.parametrize(("job", "configs"), [("toy", (ToyConfig, ToyProblem)), ("vae", (VaeConfig,))])
def test_defaults_are_the_configurations(job, configs):
    # None: not given, the configuration decides (the VAE protocol's batch size, a latent type's classes).
    params = {name: param for name, param in job_params(job).items() if param.default is not None}
    compared = 0
    for config in configs:
        for spec in dataclasses.fields(config):
            if spec.name in params and spec.default is not dataclasses.MISSING:
                assert params[spec.name].default == spec.default, spec.name
                compared += 1
    assert compared >= 10


@pytest.mark.parametrize("job", ["toy", "vae", "variance"])
def test_every_estimator_option_of_a_job_is_an_option_of_its_command(job):
    params = job_params(job)
    for name, option in estimator_options(job).items():
        assert params[name].opts == [option.flag]
        assert params[name].default == default_settings(job)[name]
        assert params[name].help.endswith(f"{option.help_for(job)}.")
    assert not set(estimator_options()) - set(estimator_options(job)) & set(params)
    assert "rloo-dcv: " in params["alpha"].help
    if job == "variance":  # a study trains nothing: no learning rates; α defaults to α*
        assert "alpha_lr" not in params and "variance-optimal" in params["alpha"].help


def test_a_new_estimator_option_needs_no_cli_edit(monkeypatch):
    # An option that only a new estimator declares: the decorator alone makes it a typed option.
    declared = Option("step_size", 0.5, help="a new estimator's step.", check=positive)
    monkeypatch.setattr(options, "estimator_options", lambda job=None: {"step_size": declared})
    monkeypatch.setattr(options, "default_settings", lambda job: {"step_size": 0.25})
    monkeypatch.setattr(options, "option_users", lambda name: ["newcomer"])
    received = []
    demo = typer.Typer()

    @demo.command()
    @options.with_estimator_options("toy")
    def job(ctx: typer.Context, steps: int = 1) -> None:
        received.append((steps, options.estimator_settings(ctx.params, "toy")))

    assert runner.invoke(demo, ["--steps", "3", "--step-size", "0.125"]).exit_code == 0
    assert runner.invoke(demo, []).exit_code == 0
    assert received == [(3, {"step_size": 0.125}), (1, {"step_size": 0.25})]
    help_text = runner.invoke(demo, ["--help"]).output
    assert "--step-size" in help_text and "newcomer: a new estimator's step." in help_text


def test_estimators_lists_each_estimators_options():
    result = runner.invoke(app, ["estimators"])
    lines = [line.replace("┃", "│") for line in result.output.splitlines()]  # the header's rule is bold
    rows = [[cell.strip() for cell in line.split("│")] for line in lines if "│" in line]
    column = next(row for row in rows if "options" in row).index("options")
    first = {row[1]: row[column] for row in rows if row[1]}
    assert first["rloo-dcv"].startswith("--alpha") and first["rloo"] == "–"
    for option in estimator_options().values():
        assert option.flag in result.output
