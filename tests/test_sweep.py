"""``dcvbench sweep``: specs, expansion, the local and Dask backends, idempotence and failures.

Every run a sweep starts is a fresh ``python -m dcvbench`` process (a few seconds of imports each),
so the runs are tiny and the local sweep is shared by the tests that only read its results.
"""

import itertools
import json
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from dcvbench import cli
from dcvbench.checkpoints import CHECKPOINT
from dcvbench.cli import app, main
from dcvbench.cli.sweep import job_commands
from dcvbench.results import STALE, TIMING_COLUMNS, find_runs, process_record, read_manifest, read_trace
from dcvbench.sweep import (
    _plan,
    existing_runs,
    expand,
    load_spec,
    merged_note,
    parse_spec,
    run_sweep,
    usable_cores,
)

runner = CliRunner()
COMMANDS = job_commands()
SPEC = """
job = "toy"

[options]
dim = 10
steps = 30
var-samples = 50
var_every = 10
checkpoint-every = 10
device = "cpu"

[grid]
estimator = ["rloo", "disarm"]
seed = [1, 2]
"""
FIXED = ["--dim", "10", "--steps", "30", "--var-samples", "50", "--var-every", "10"]
FIXED += ["--checkpoint-every", "10", "--device", "cpu"]
GRID = [("rloo", 1), ("rloo", 2), ("disarm", 1), ("disarm", 2)]  # the last axis varies fastest
LINKED_TOY = 'job = "toy"\n[options]\nestimator = "rloo"\nseed = 1\n[grid]\n'  # a linked axis to follow
# The ReinMax paper's latent shapes, each a pair of options: a linked axis, crossed with two plain ones.
LINKED = """
job = "vae"

[options]
latent = "categorical"
steps = 10

[grid]
shape = [{classes = 8, latent-vars = 4}, {classes = 4, latent_vars = 24}]
estimator = ["reinmax", "st"]
seed = [1, 2]
"""


def write_spec(directory: Path, text: str = SPEC) -> Path:
    path = directory / "sweep.toml"
    path.write_text(text)
    return path


def traces(out: Path) -> dict[tuple[str, int], pd.DataFrame]:
    """Each run's trace without its timing columns, by (estimator, seed)."""
    found = {}
    for run in find_runs(out):
        manifest = read_manifest(run)
        found[manifest["estimator"], manifest["seed"]] = read_trace(run).drop(columns=TIMING_COLUMNS)
    return found


def assert_same_traces(out: Path, reference: dict[tuple[str, int], pd.DataFrame]) -> None:
    made = traces(out)
    assert sorted(made) == sorted(reference)
    for key, trace in made.items():
        pd.testing.assert_frame_equal(trace, reference[key], check_exact=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[tuple[str, int], pd.DataFrame]:
    """The sweep's four runs made by hand, in this process, in one invocation."""
    out = tmp_path_factory.mktemp("by-hand")
    args = ["toy", *FIXED, "--estimator", "rloo", "--estimator", "disarm", "--seed", "1", "--seed", "2"]
    assert main([*args, "--out", str(out), "-q"]) == 0
    return traces(out)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """The sweep through the local backend, over a run of it that was interrupted at step 15."""
    base = tmp_path_factory.mktemp("local")
    spec, out = write_spec(base), base / "runs"
    interrupted = ["toy", *FIXED, "--estimator", "rloo", "--seed", "2", "--out", str(out)]
    steps = itertools.count(1)

    def advance(self, steps_done: int = 1) -> None:
        if next(steps) == 15:
            raise KeyboardInterrupt  # as Ctrl-C would, after the checkpoint at step 10

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["dcvbench", *interrupted])  # recorded as a shell would record it
        patch.setattr(cli.RichProgress, "advance", advance)
        assert main(interrupted) == 130
    result = runner.invoke(app, ["sweep", str(spec), "--out", str(out), "--workers", "2"])
    return spec, out, result


def test_spec_expands_to_every_combination(tmp_path):
    runs = expand(load_spec(write_spec(tmp_path), COMMANDS))
    assert [run.label for run in runs] == [f"estimator={e} seed={s}" for e, s in GRID]
    assert [run.args[-4:] for run in runs] == [("--estimator", e, "--seed", str(s)) for e, s in GRID]
    assert len({run.key for run in runs}) == len({run.identity for run in runs}) == 4
    assert runs[0].key == (
        "toy checkpoint_every=10 device=cpu dim=10 estimator=rloo seed=1 steps=30 var_every=10 var_samples=50"
    )


def test_identity_ignores_spelling_order_and_defaults():
    spec = {"job": "toy", "options": {"estimator": "rloo", "seed": 1}}
    (plain,) = expand(parse_spec(spec, COMMANDS))
    spelled = {"job": "toy", "options": {"seed": 1, "target": 0.499, "w-seed": 0, "estimator": "rloo"}}
    (explicit,) = expand(parse_spec(spelled, COMMANDS))
    assert plain.identity == explicit.identity  # the defaults, given or not
    assert plain.key != explicit.key


def test_a_run_is_known_by_its_configuration_not_its_command_line(tmp_path):
    # A finished run whose recorded command no dcvbench could parse today (an option renamed since):
    # its configuration alone says it is the sweep's run, so the sweep skips it.
    out = tmp_path / "runs"
    args = ["toy", "--dim", "4", "--steps", "2", "--var-samples", "4", "--estimator", "rloo", "--seed", "1"]
    assert main([*args, "--device", "cpu", "--out", str(out), "-q"]) == 0
    (made,) = find_runs(out)
    manifest = json.loads((made / "run.json").read_text())
    (made / "run.json").write_text(json.dumps({**manifest, "command": "dcvbench toy --dimension 4"}))
    spec = {"job": "toy", "options": {"dim": 4, "steps": 2, "var-samples": 4, "device": "cpu"}}
    spec["grid"] = {"estimator": ["rloo", "disarm"], "seed": [1]}
    runs = expand(parse_spec(spec, COMMANDS))
    assert list(existing_runs(out, "toy")) == [runs[0].identity]
    (skipped,) = run_sweep(runs[:1], out)
    assert (skipped.status, skipped.run_dir) == ("skipped", made)


@pytest.mark.parametrize(
    ("grid", "labels", "merged"),
    [
        # The same value spelled twice: one run, the first kept.
        ({"k": [2, "2", 4]}, ["k=2", "k=4"], [("k=2",), ()]),
        # A default given or left out: the same configuration, though not the same command line.
        ({"m": [{"dim": 3}, {"dim": 3, "k": 2}, {"dim": "3"}]}, ["dim=3"], [("dim=3 k=2", "dim=3")]),
        # A point the job refuses (disarm needs an even K): the same command line, one failing run.
        ({"k": [3, "3"]}, ["k=3"], [("k=3",)]),
    ],
)
def test_equal_grid_points_are_one_run(grid, labels, merged):
    spec = {"job": "toy", "options": {"estimator": "disarm", "seed": 1}, "grid": grid}
    runs = expand(parse_spec(spec, COMMANDS))
    assert [run.label for run in runs] == labels
    assert [run.merged for run in runs] == merged
    note = merged_note(runs)
    assert f"merged: {sum(map(len, merged))} " in note and f"first: {merged[0][0]}, " in note


def test_a_spec_without_equal_points_merges_nothing(tmp_path):
    runs = expand(load_spec(write_spec(tmp_path), COMMANDS))
    assert [run.merged for run in runs] == [()] * 4 and merged_note(runs) is None


def test_dry_run_lists_equal_grid_points_once(tmp_path, capsys):
    spec = write_spec(tmp_path, SPEC.replace("seed = [1, 2]", 'seed = [1, "1"]'))
    assert main(["sweep", str(spec), "--out", str(tmp_path / "runs"), "--dry-run"]) == 0
    printed = capsys.readouterr()
    chosen = [shlex.split(line)[-6:-3] for line in printed.out.splitlines()]  # ESTIMATOR --seed SEED
    assert chosen == [["rloo", "--seed", "1"], ["disarm", "--seed", "1"]]
    assert printed.err.count("duplicate grid points merged: 2 ") == 1  # one line on stderr


def test_dry_run_prints_each_invocation(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["sweep", str(write_spec(tmp_path)), "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = [
        shlex.join(["dcvbench", "toy", *FIXED, "--estimator", e, "--seed", str(s), "--out", str(out), "-q"])
        for e, s in GRID
    ]
    assert lines == expected
    assert not out.exists()


def test_linked_axis_sets_its_options_together(tmp_path, capsys):
    spec = load_spec(write_spec(tmp_path, LINKED), COMMANDS)
    runs = expand(spec)
    shapes, estimators, seeds = [(8, 4), (4, 24)], ["reinmax", "st"], [1, 2]
    grid = list(itertools.product(shapes, estimators, seeds))  # file order, the last axis fastest
    assert [run.label for run in runs] == [
        f"classes={c} latent_vars={n} estimator={e} seed={s}" for (c, n), e, s in grid
    ]
    fixed = ("--latent", "categorical", "--steps", "10")
    assert [run.args for run in runs] == [
        (*fixed, "--classes", str(c), "--latent-vars", str(n), "--estimator", e, "--seed", str(s))
        for (c, n), e, s in grid
    ]
    # Each run is configured by the job as the invocation typed by hand would be: the same identity.
    for run, ((c, n), e, s) in zip(runs, grid, strict=True):
        typed = {
            "latent": "categorical",
            "classes": c,
            "latent_vars": n,
            "estimator": e,
            "seed": s,
            "steps": 10,
        }
        (by_hand,) = expand(parse_spec({"job": "vae", "options": typed}, COMMANDS))
        assert run.identity == by_hand.identity is not None
    assert len({run.identity for run in runs}) == 8
    out = tmp_path / "runs"
    assert main(["sweep", str(write_spec(tmp_path, LINKED)), "--out", str(out), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == [run.command(out) for run in runs]
    assert not out.exists()


def test_tables_of_a_linked_axis_may_set_different_options():
    # st has no temperature: its table leaves it out, and its run takes the job's default.
    grid = {"method": [{"estimator": "st"}, {"estimator": "reinmax", "temperature": 1.5}], "seed": [1]}
    st, reinmax = expand(
        parse_spec({"job": "toy", "options": {"latent": "categorical"}, "grid": grid}, COMMANDS)
    )
    assert shlex.join(st.args) == "--latent categorical --estimator st --seed 1"
    assert shlex.join(reinmax.args) == "--latent categorical --estimator reinmax --temperature 1.5 --seed 1"
    assert reinmax.label == "estimator=reinmax temperature=1.5 seed=1"


def test_reinmax_grid_preset_is_a_valid_sweep():
    # Every run of the committed preset is one the vae command configures (each temperature suits
    # its estimator: ReinMax's τ ≥ 1), and no two are the same run.
    spec = load_spec(Path(__file__).parents[1] / "baselines" / "reinmax-grid" / "grid.toml", COMMANDS)
    runs = expand(spec)
    assert len(runs) == 6 * 10 * 2  # shapes × (estimator, temperature) pairs × seeds
    assert None not in {run.identity for run in runs}
    assert len({run.identity for run in runs}) == len(runs)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('job = "toys"\n', "unknown job 'toys'"),
        ("[options]\ndim = 3\n", "names no job"),
        ('job = "toy"\n[options]\ndimension = 3\n', "unknown toy option 'dimension'"),
        ('job = "toy"\n[options]\nestimator = "rloo"\n[grid]\nseed = []\n', "seed is empty"),
        ('job = "toy"\n[options]\nseed = 1\n[grid]\nestimator = "rloo"\n', "must be a list"),
        ('job = "toy"\n[options]\nestimator = "rloo"\nseed = [1, 2]\n', "list several in [grid]"),
        ('job = "toy"\n[options]\nseed = 1\n', "add estimator to [options] or [grid]"),
        ('job = "toy"\n[options]\nout = "x"\n', "give --out to dcvbench sweep"),
        ('job = "toy"\n[options]\nestimator = "rloo"\nseed = 1\ndim = "many"\n', "Invalid value for '--dim'"),
        ('job = "toy\n', "is not valid TOML"),
        # Linked axes: each table is options of the job, set in one place, with values a run can take.
        (f"{LINKED_TOY}shape = [{{clases = 3}}]\n", "unknown toy option 'clases' in [grid] shape"),
        (f"{LINKED_TOY}shape = [{{classes = 3}}, 4]\n", "[grid] shape mixes tables and values"),
        (f"{LINKED_TOY}shape = [{{}}]\n", "[grid] shape has an empty table"),
        (f"{LINKED_TOY}shape = [{{dim = 3}}, {{dim = 3}}]\n", "[grid] shape repeats dim=3"),
        (f"{LINKED_TOY}shape = [{{dim = [3, 4]}}]\n", "dim takes one value per run"),
        (f"{LINKED_TOY}shape = [{{dim = {{a = 1}}}}]\n", "dim: {'a': 1} is not a number"),
        (f"{LINKED_TOY}shape = [{{dim = 'many'}}]\n", "Invalid value for '--dim'"),
        (f"{LINKED_TOY}shape = [{{out = 'x'}}]\n", "[grid] shape out is not a spec option"),
        (f"{LINKED_TOY}shape = [{{seed = 2}}]\n", "seed is set in both [options] and [grid] shape"),
        (f"{LINKED_TOY}dim = [3]\nshape = [{{dim = 4}}]\n", "dim is set in both [grid] dim and [grid] shape"),
        (f"{LINKED_TOY}a = [{{dim = 3}}]\nb = [{{dim = 4}}]\n", "dim is set in both [grid] a and [grid] b"),
        (
            'job = "toy"\n[options]\nseed = 1\n[grid]\nm = [{estimator = "rloo"}, {dim = 3}]\n',
            "a table of [grid] m leaves out estimator",
        ),
    ],
)
def test_bad_spec_is_one_line_and_exit_2(tmp_path, capsys, text, message):
    out = tmp_path / "runs"
    assert main(["sweep", str(write_spec(tmp_path, text)), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("dcvbench: error: ")
    assert message in error
    assert not out.exists()


def test_unreadable_spec_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "missing.toml"), "--dry-run"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "cannot read sweep spec" in error


def test_a_spec_that_is_not_utf8_is_one_line_and_exit_2(tmp_path, capsys):
    spec = tmp_path / "latin1.toml"
    spec.write_bytes('job = "toy"\n# café\n'.encode("latin-1"))  # TOML is UTF-8; é is 0xe9 in Latin-1
    assert main(["sweep", str(spec), "--dry-run"]) == 2
    error = capsys.readouterr().err
    assert error == f"dcvbench: error: sweep spec {spec} is not UTF-8 text: byte 0xe9 at offset 17\n"


def test_missing_dask_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    out = tmp_path / "runs"
    assert main(["sweep", str(write_spec(tmp_path)), "--out", str(out), "--backend", "dask"]) == 2
    assert "pip install 'dcvbench[dask]'" in capsys.readouterr().err
    assert not out.exists()


def ended_process() -> dict:
    """The process record of a process that has ended: a manifest naming it is stale."""
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return {"host": socket.gethostname(), "pid": process.pid, "pid_started": None}


def test_plan_skips_resumes_restarts_and_reports(tmp_path):
    spec = {"job": "toy", "options": {"estimator": "rloo", "seed": 1}}
    (toy,) = expand(parse_spec(spec, COMMANDS))
    (variance,) = expand(parse_spec({"job": "variance", "options": {"estimator": "rloo"}}, COMMANDS))
    alive, ended = process_record(), ended_process()

    def plan(*statuses: str, retry: bool = False, checkpoint: bool = True, run=toy) -> str:
        """What the sweep does with ``run``, given directories of these statuses, oldest first."""
        matches = []
        for i, status in enumerate(statuses):
            path = tmp_path / f"{len(list(tmp_path.iterdir()))}-{i}-{status}"
            path.mkdir()
            if checkpoint:
                (path / CHECKPOINT).touch()
            # A stale run's manifest says running, and names a process that has ended.
            process = ended if status == STALE else alive
            matches.append((path, {"status": "running" if status == STALE else status, "process": process}))
        step = _plan(run, matches, tmp_path, retry)
        if step.result:
            return step.result.status
        if step.resuming:
            assert step.resuming == matches[-1][0]  # the newest
            return "resume"
        assert step.argv == run.argv(tmp_path)  # a new run directory
        if not step.note:
            return "run"
        assert step.note.endswith(f"({matches[-1][0]}): started again")  # the old one is named
        return "again"

    assert plan() == "run"
    assert plan("failed", "finished") == plan("finished", STALE) == "skipped"
    assert plan("interrupted", "running") == plan(STALE, "running") == "running"  # alive: left to it
    assert plan("failed", "interrupted") == plan(STALE) == "resume"
    # Stopped before its first checkpoint: started again, in a new directory.
    assert plan("interrupted", checkpoint=False) == plan(STALE, checkpoint=False) == "again"
    assert plan("interrupted", run=variance) == "again"  # a variance study cannot resume
    # The newest directory decides: an older one is one that was started again.
    assert plan("interrupted", "failed") == "failed"
    assert plan("diverged") == "diverged"
    assert plan("failed") == "failed"
    assert plan("failed", retry=True) == "run"


def test_local_sweep_matches_hand_made_runs(local_sweep, reference):
    spec, out, result = local_sweep
    assert result.exit_code == 0, result.output
    assert result.output.count("│ finished ") == 3 and result.output.count("│ resumed ") == 1
    assert_same_traces(out, reference)
    # The runs the sweep started record the invocation --dry-run prints, with the threads that the
    # sweep gave each (two runs at once share the cores: half of them each); the one resumed keeps its own.
    threads = max(1, usable_cores() // 2)
    manifests = [read_manifest(run) for run in find_runs(out)]
    typed = {f"{run.command(out)} --threads {threads}" for run in expand(load_spec(spec, COMMANDS))}
    started = [manifest for manifest in manifests if manifest["command"] in typed]
    assert len(started) == 3 and len({manifest["command"] for manifest in manifests}) == 4
    assert {manifest["versions"]["torch_threads"] for manifest in started} == {threads}


def test_relaunch_skips_everything(local_sweep):
    spec, out, _ = local_sweep
    before = find_runs(out)
    results = run_sweep(expand(load_spec(spec, COMMANDS)), out)
    assert [result.status for result in results] == ["skipped"] * 4
    assert sorted(result.run_dir for result in results) == before == find_runs(out)


def test_dask_local_cluster_matches_hand_made_runs(tmp_path, reference):
    pytest.importorskip(
        "distributed", reason="dask.distributed is not installed (pip install 'dcvbench[dask]')"
    )
    out = tmp_path / "runs"
    args = [
        "sweep",
        str(write_spec(tmp_path)),
        "--out",
        str(out),
        "--backend",
        "dask",
        "--workers",
        "2",
        "-q",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(result.output.split()) == [str(run) for run in find_runs(out)]
    assert_same_traces(out, reference)


def test_failed_run_is_reported_and_the_others_finish(tmp_path):
    spec = SPEC.replace("seed = [1, 2]", "seed = [1]").replace('device = "cpu"', 'device = "cpu"\nk = 3')
    out = tmp_path / "runs"
    runs = expand(load_spec(write_spec(tmp_path, spec), COMMANDS))
    rloo, disarm = run_sweep(runs, out, workers=2)
    assert rloo.status == "finished" and read_manifest(rloo.run_dir)["status"] == "finished"
    assert (disarm.status, disarm.exit_code, disarm.run_dir) == ("failed", 2, None)
    assert disarm.note.startswith("dcvbench: error: --k 3") and "even" in disarm.note

    # A run that failed after making its directory is reported on a re-launch, not run again.
    manifest = json.loads((rloo.run_dir / "run.json").read_text())
    (rloo.run_dir / "run.json").write_text(json.dumps({**manifest, "status": "failed"}))
    (again,) = run_sweep(runs[:1], out)
    assert (again.status, again.run_dir) == ("failed", rloo.run_dir)
    assert "--retry-failed" in again.note
