"""The command line, end to end: Typer's test runner for normal use, ``main`` for usage errors."""

import pytest
from typer.testing import CliRunner

from dcvbench.cli import app, main
from dcvbench.estimators import estimator_names
from dcvbench.results import find_runs, read_table, read_trace

runner = CliRunner()
SMALL_TOY = ["toy", "--dim", "8", "--steps", "20", "--var-every", "10", "--var-samples", "100"]


def test_estimators_lists_the_registry():
    result = runner.invoke(app, ["estimators"])
    assert result.exit_code == 0
    for name in estimator_names():
        assert name in result.output


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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["toy", "--estimator", "nope"], "unknown estimator 'nope'; choose from:"),
        (["toy", "--estimator", "rloo", "--k", "1"], "K must be ≥ 2 for rloo, got 1"),
        (["toy", "--estimator", "disarm", "--k", "3"], "K must be even for disarm, got 3"),
        (["toy", "--dim", "-5"], "--dim must be positive, got -5"),
        (["toy", "--dim", "abc"], "Invalid value for '--dim'"),
        (["toy", "--var-samples", "1"], "--var-samples must be at least 2"),
        (["toy", "--no-such-option"], "No such option"),
        (["variance", "--theta", "2"], "--theta must be in (0, 1)"),
        (["variance", "--problem", "vae-ish"], "unknown problem 'vae-ish'"),
        (["variance", "--estimator", "arm", "--k", "5"], "K must be even for arm, got 5"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([*args, "--out", str(out)] if args[-1] != "--no-such-option" else args)
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("dcvbench: error:")
    assert message in lines[0]
    assert "Traceback" not in captured.err
    assert not out.exists()  # refused before anything was written


def test_unwritable_out_is_refused_without_touching_anything(tmp_path, capsys):
    blocker = tmp_path / "results"
    blocker.write_text("precious")
    for out in (blocker, blocker / "below"):
        code = main([*SMALL_TOY, "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 2
        assert len(err.splitlines()) == 1
        assert str(blocker) in err
    assert blocker.read_text() == "precious"


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
    args = "vae --estimator rloo --latent 8 --batch-size 20 --steps 10 --log-every 5 --eval-every 10"
    args += f" --var-every 10 --var-samples 4 --eval-samples 2 --device cpu --out {tmp_path}"
    result = runner.invoke(app, args.split())
    assert result.exit_code == 0, result.output
    (run,) = find_runs(tmp_path)
    assert list(read_trace(run)["step"]) == [0, 5, 10]
    assert "test bound" in result.output
