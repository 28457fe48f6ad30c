"""A real ``dcvbench`` process, stopped by SIGINT or SIGTERM mid-run, keeps what it measured; a
VAE run stopped so resumes to exactly the trace of an uninterrupted run."""

import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from dcvbench.checkpoints import CHECKPOINT, load_checkpoint
from dcvbench.cli import main
from dcvbench.config import vae_config_from_dict
from dcvbench.jobs.vae import run_vae
from dcvbench.results import STALE, TIMING_COLUMNS, find_runs, read_manifest, read_trace, run_status

LONG_TOY = ["toy", "--dim", "20", "--steps", "1000000", "--estimator", "rloo", "--var-samples", "50", "-q"]

TINY_VAE = [
    "vae", "--estimator", "rloo-dcv", "--latent-vars", "8", "--batch-size", "20", "--steps", "60",
    "--log-every", "5", "--checkpoint-every", "10", "--eval-every", "1000", "--var-every", "1000",
    "--var-samples", "4", "--eval-samples", "2", "--device", "cpu", "-q",
]  # fmt: skip
# `dcvbench` itself, except that the progress bar pauses once it reaches a given step and says so
# in a marker file: the test then signals a process that is certainly mid-run, with no timing race.
PAUSING_DCVBENCH = """
import sys, time
from pathlib import Path
import dcvbench.cli as cli

marker, pause_at = Path(sys.argv[1]), int(sys.argv[2])
advance, done = cli.RichProgress.advance, [0]

def advance_then_pause(self, steps=1):
    advance(self, steps)
    done[0] += steps
    if done[0] == pause_at:
        marker.touch()
        time.sleep(600)

cli.RichProgress.advance = advance_then_pause
sys.argv = ["dcvbench", *sys.argv[3:]]
cli.main()
"""


def default_sigint() -> None:
    """In the child, before it starts: SIGINT at its default, as a process started from a terminal
    has it. A shell running this suite in the background (``cmd &`` without job control) ignores
    SIGINT, the child would inherit that, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(root, pattern, process, timeout=120.0):
    """Block until a file matching ``pattern`` exists below ``root`` (``process`` is mid-run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(root.glob(pattern)):
            return
        if process.poll() is not None:
            raise AssertionError(f"the process ended ({process.returncode}) before {pattern} appeared")
        time.sleep(0.1)
    raise AssertionError(f"no {pattern} appeared under {root} within {timeout} s")


def wait_for_rows(root, process, timeout=120.0):
    """Block until the run under ``root`` has flushed a trace part (``process`` is mid-run)."""
    wait_for(root, "*/trace/part-*.parquet", process, timeout)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_run_keeps_the_trace_and_says_interrupted(tmp_path, sig, code):
    command = [sys.executable, "-c", "from dcvbench.cli import main; main()", *LONG_TOY]
    process = subprocess.Popen(
        [*command, "--out", str(tmp_path)], stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )
    try:
        wait_for_rows(tmp_path, process)
        process.send_signal(sig)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == code
    assert "Traceback" not in err
    (run,) = find_runs(tmp_path)
    manifest = read_manifest(run)
    assert manifest["status"] == "interrupted"
    trace = read_trace(run)
    assert len(trace) > 0
    assert manifest["last_step"] >= trace["step"].max()


def test_sigterm_mid_vae_run_then_resume_gives_the_uninterrupted_trace(tmp_path):
    out, marker = tmp_path / "out", tmp_path / "paused"
    command = [sys.executable, "-c", PAUSING_DCVBENCH, str(marker), "33", *TINY_VAE, "--out", str(out)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(tmp_path, "paused", process)  # 33 steps done: checkpoint at 30, rows every 5
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143
    assert err.strip() == "dcvbench: terminated"
    (run,) = find_runs(out)
    manifest = read_manifest(run)
    assert (manifest["status"], manifest["last_step"]) == ("interrupted", 30)
    assert list(read_trace(run)["step"]) == [0, 5, 10, 15, 20, 25, 30]
    assert load_checkpoint(run / CHECKPOINT, torch.device("cpu"))["step"] == 30

    assert main(["vae", "--resume", str(run), "-q"]) == 0
    assert read_manifest(run)["status"] == "finished"
    config = vae_config_from_dict({**manifest["config"], "out": str(tmp_path / "full")})
    (full,) = run_vae(config)
    pd.testing.assert_frame_equal(
        read_trace(full.path).drop(columns=TIMING_COLUMNS), read_trace(run).drop(columns=TIMING_COLUMNS)
    )


# `dcvbench` whose rows all stay buffered until the run ends, that pauses at a given step (as
# PAUSING_DCVBENCH), and whose end takes 2 s and says when it begins: a second signal then certainly
# arrives during the clean-up after the first.
SLOW_CLEAN_UP_DCVBENCH = """
import sys, time
from pathlib import Path
import dcvbench.cli as cli
from dcvbench import results

paused, cleaning, pause_at = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
results.FLUSH_SECONDS = float("inf")
advance, done = cli.RichProgress.advance, [0]

def advance_then_pause(self, steps=1):
    advance(self, steps)
    done[0] += steps
    if done[0] == pause_at:
        paused.touch()
        time.sleep(600)

finish = results.Run.finish

def slow_finish(self, *args, **kwargs):
    cleaning.touch()
    time.sleep(2)
    finish(self, *args, **kwargs)

cli.RichProgress.advance = advance_then_pause
results.Run.finish = slow_finish
sys.argv = ["dcvbench", *sys.argv[4:]]
cli.main()
"""


@pytest.mark.parametrize(
    ("first", "second", "code"),
    [(signal.SIGINT, signal.SIGINT, 130), (signal.SIGTERM, signal.SIGINT, 143)],
    ids=["int-int", "term-int"],  # an impatient second Ctrl-C; either signal first or second
)
def test_a_second_signal_during_the_clean_up_does_not_cut_it_short(tmp_path, first, second, code):
    out, paused, cleaning = tmp_path / "out", tmp_path / "paused", tmp_path / "cleaning"
    toy = [*LONG_TOY, "--log-every", "10", "--out", str(out)]
    command = [sys.executable, "-c", SLOW_CLEAN_UP_DCVBENCH, str(paused), str(cleaning), "95", *toy]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    try:
        wait_for(tmp_path, "paused", process)  # 95 steps done, rows at 0, 10, …, 90 all buffered
        process.send_signal(first)
        wait_for(tmp_path, "cleaning", process)  # the clean-up has begun and takes 2 s
        process.send_signal(second)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    (run,) = find_runs(out)
    manifest = read_manifest(run)
    assert (manifest["status"], manifest["last_step"]) == ("interrupted", 90)
    assert list(read_trace(run)["step"]) == list(range(0, 91, 10))  # the buffered rows, all written
    assert process.returncode == code
    assert "Traceback" not in err
    assert "still saving" in err


def test_a_live_run_is_not_resumed_and_a_sigkilled_one_is(tmp_path, capsys):
    out, marker = tmp_path / "out", tmp_path / "paused"
    vae = [*TINY_VAE, "--out", str(out)]
    process = subprocess.Popen([sys.executable, "-c", PAUSING_DCVBENCH, str(marker), "33", *vae])
    try:
        wait_for(tmp_path, "paused", process)  # checkpoint at 30; the process is alive and paused
        (run,) = find_runs(out)
        assert main(["vae", "--resume", str(run), "-q"]) == 2  # two writers of one run: refused
        assert "is still running" in capsys.readouterr().err
        process.kill()  # SIGKILL: no clean-up, the manifest still says running
        process.wait()
    finally:
        process.kill()
    assert read_manifest(run)["status"] == "running"
    assert run_status(read_manifest(run)) == STALE
    assert main(["vae", "--resume", str(run), "-q"]) == 0
    manifest = read_manifest(run)
    assert (manifest["status"], manifest["last_step"]) == ("finished", 60)
    assert [resume["from_step"] for resume in manifest["resumes"]] == [30]
