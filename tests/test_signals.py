"""A real ``dcvbench`` process, stopped by SIGINT or SIGTERM mid-run, keeps what it measured."""

import signal
import subprocess
import sys
import time

import pytest

from dcvbench.results import find_runs, read_manifest, read_trace

LONG_TOY = ["toy", "--dim", "20", "--steps", "1000000", "--estimator", "rloo", "--var-samples", "50", "-q"]


def wait_for_rows(root, timeout=120.0):
    """Block until the run under ``root`` has flushed a trace part (the process is mid-run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(root.glob("*/trace/part-*.parquet")):
            return
        time.sleep(0.2)
    raise AssertionError(f"no trace part appeared under {root} within {timeout} s")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_run_keeps_the_trace_and_says_interrupted(tmp_path, sig, code):
    command = [sys.executable, "-c", "from dcvbench.cli import main; main()", *LONG_TOY]
    process = subprocess.Popen([*command, "--out", str(tmp_path)], stderr=subprocess.PIPE, text=True)
    try:
        wait_for_rows(tmp_path)
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
