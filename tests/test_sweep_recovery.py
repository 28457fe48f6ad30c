"""A re-launched sweep finishes what it started: a run SIGKILLed mid-way (after or before its first
checkpoint), one interrupted before its first checkpoint, and one still running elsewhere.

Each run is a real ``python -m dcvbench`` process; the one that is killed kills itself with SIGKILL at a
given step (no handler runs, as when the out-of-memory killer takes it), so where it stops is exact.
"""

import contextlib
import itertools
import json
from pathlib import Path

import pandas as pd
import pytest

from dcvbench import cli
from dcvbench.cli import main
from dcvbench.cli.sweep import job_commands
from dcvbench.results import (
    STALE,
    TIMING_COLUMNS,
    find_runs,
    process_record,
    read_manifest,
    read_trace,
    run_status,
)
from dcvbench.sweep import RunProcesses, expand, load_spec, run_sweep

# `python -m dcvbench`, except that the run SIGKILLs itself once its progress reaches a given step.
KILLED_AT = """
import os, signal, sys
import dcvbench.cli as cli

kill_at, advance, done = int(sys.argv[1]), cli.RichProgress.advance, [0]

def advance_then_die(self, steps=1):
    advance(self, steps)
    done[0] += steps
    if done[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

cli.RichProgress.advance = advance_then_die
sys.argv = ["dcvbench", *sys.argv[2:]]
cli.main()
"""
# One tiny toy run, a row every 10 steps: killed at step 15, its last row on disk is step 10's if it
# checkpointed there (a checkpoint flushes the trace first). The spec is that same run, at each of
# the checkpoint cadences it is given.
RUN = ["--dim", "5", "--steps", "30", "--log-every", "10", "--var-every", "10", "--var-samples", "10"]
RUN += ["--device", "cpu", "--estimator", "rloo", "--seed", "1"]
SPEC = """
job = "toy"

[options]
dim = 5
steps = 30
log-every = 10
var-every = 10
var-samples = 10
device = "cpu"
estimator = "rloo"
seed = 1

[grid]
checkpoint-every = {checkpoint_every}
"""


def write_spec(directory: Path, *checkpoint_every: int) -> Path:
    path = directory / "sweep.toml"
    path.write_text(SPEC.format(checkpoint_every=list(checkpoint_every)))
    return path


def files(run_dir: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}


@contextlib.contextmanager
def runs_killed_at(step: int):
    """The sweep's runs SIGKILL themselves at ``step`` (each still its own ``dcvbench`` process)."""
    start = RunProcesses.run

    def start_killed(self, command: list[str], env: dict[str, str]):
        assert command[1:3] == ["-m", "dcvbench"]
        return start(self, [command[0], "-c", KILLED_AT, str(step), *command[3:]], env)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RunProcesses, "run", start_killed)
        yield


def sweep(spec: Path, out: Path, capsys, *options: str) -> tuple[int, list[str], list[str]]:
    """``dcvbench sweep SPEC --out OUT -q``: its exit code, stdout lines (run dirs), stderr lines."""
    capsys.readouterr()  # what came before
    code = main(["sweep", str(spec), "--out", str(out), "-q", *options])
    printed = capsys.readouterr()
    return code, printed.out.splitlines(), printed.err.splitlines()


def by_hand(out: Path, checkpoint_every: int) -> int:
    """The spec's run typed by hand, in this process: its exit code."""
    return main(["toy", *RUN, "--checkpoint-every", str(checkpoint_every), "--out", str(out), "-q"])


def uninterrupted_trace(out: Path, checkpoint_every: int) -> pd.DataFrame:
    assert by_hand(out, checkpoint_every) == 0
    (run,) = find_runs(out)
    return read_trace(run).drop(columns=TIMING_COLUMNS)


def test_runs_killed_mid_way_are_stale_then_resumed_or_started_again(tmp_path, capsys):
    # Both killed at step 15: one after its checkpoint at step 10, one before its first (at step 100).
    spec, out = write_spec(tmp_path, 10, 100), tmp_path / "runs"
    after, before = expand(load_spec(spec, job_commands()))
    with runs_killed_at(15):
        code, _, errors = sweep(spec, out, capsys, "--workers", "2")
    assert code == 1  # not finished
    killed = {read_manifest(path)["config"]["checkpoint_every"]: path for path in find_runs(out)}
    assert [run_status(read_manifest(path)) for path in killed.values()] == [STALE] * 2
    resume, again = errors
    assert resume == f"dcvbench: {after.key}: stale: killed (signal 9) at step 10; a re-launch will resume it"
    # Its rows were not flushed yet (unless 5 s passed: then it names their step).
    assert again.startswith(f"dcvbench: {before.key}: stale: killed (signal 9) ")
    assert again.endswith("; a re-launch will start it again")
    left = files(killed[100])

    resumed, restarted = run_sweep([after, before], out, workers=2)
    assert (resumed.status, resumed.run_dir, resumed.note) == ("resumed", killed[10], "")
    assert [resume["from_step"] for resume in read_manifest(killed[10])["resumes"]] == [10]
    trace = read_trace(killed[10]).drop(columns=TIMING_COLUMNS)
    pd.testing.assert_frame_equal(trace, uninterrupted_trace(tmp_path / "by-hand", 10), check_exact=True)
    # Started again in a new directory; the old one is left as it was, its rows apart.
    assert restarted.status == read_manifest(restarted.run_dir)["status"] == "finished"
    assert restarted.note == f"stopped before its first checkpoint ({killed[100]}): started again"
    assert find_runs(out) == sorted([*killed.values(), restarted.run_dir])
    assert files(killed[100]) == left
    assert sweep(spec, out, capsys) == (0, [str(killed[10]), str(restarted.run_dir)], [])  # all done


def test_a_run_interrupted_before_its_first_checkpoint_is_finished_by_relaunching(tmp_path, capsys):
    spec, out = write_spec(tmp_path, 100), tmp_path / "runs"
    steps = itertools.count(1)

    def advance(self, steps_done: int = 1) -> None:
        if next(steps) == 15:
            raise KeyboardInterrupt  # as Ctrl-C would, with no checkpoint yet

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli.RichProgress, "advance", advance)
        assert by_hand(out, checkpoint_every=100) == 130
    (interrupted,) = find_runs(out)
    assert read_manifest(interrupted)["status"] == "interrupted"

    code, printed, errors = sweep(spec, out, capsys)
    (started,) = set(find_runs(out)) - {interrupted}
    assert (code, printed, errors) == (0, [str(started)], [])
    assert read_manifest(started)["status"] == "finished"
    assert read_manifest(interrupted)["status"] == "interrupted"


def test_a_run_another_process_is_running_is_not_finished(tmp_path, capsys):
    spec, out = write_spec(tmp_path, 10), tmp_path / "runs"
    (run,) = expand(load_spec(spec, job_commands()))
    assert by_hand(out, checkpoint_every=10) == 0
    (running,) = find_runs(out)
    # As it was mid-run: its manifest says running, and names a process that is alive (this one).
    manifest = json.loads((running / "run.json").read_text())
    (running / "run.json").write_text(
        json.dumps({**manifest, "status": "running", "process": process_record()})
    )

    code, printed, errors = sweep(spec, out, capsys)
    assert (code, printed) == (1, [str(running)])
    (error,) = errors
    assert error.startswith(f"dcvbench: {run.key}: running: ")
    assert error.endswith("; a re-launch will leave it to its process")
    assert find_runs(out) == [running] and read_manifest(running)["status"] == "running"  # not touched
