"""A run always ends with a true status: when its trace or checkpoint cannot be written (a full disk, a
read-only file system, a value its schema cannot hold) it says ``failed`` and why, the rows flushed
before stay readable, the buffered ones are saved elsewhere, and the user sees one line.

Two kinds of fault: injected (a :class:`SmallDisk` that takes a fixed number of bytes, then refuses
every new file with ENOSPC, as a full file system does) and real (a small tmpfs filled up under a
running ``dcvbench`` process, where the machine lets the test mount one).
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dcvbench import checkpoints, results
from dcvbench.cli import main
from dcvbench.results import Run, RunFailed, read_manifest, read_trace

TOY = ["toy", "--dim", "4", "--steps", "40", "--estimator", "rloo", "--var-samples", "4", "--seed", "3"]
TOY += ["--device", "cpu", "-q"]


class SmallDisk:
    """``results.write_atomic`` with the disk under ``root`` able to take ``free`` more bytes, then
    refusing new files there (other file systems, such as the rescue directory's, are unaffected).

    ``refuse`` narrows the fault to the files whose name contains it (``"part-"``, ``"checkpoint"``);
    ``tries(prefix)`` counts the writes tried on the disk of files whose name starts with ``prefix``: a
    failing write must not be tried again.
    """

    def __init__(self, monkeypatch, root: Path, free: int, refuse: str = ""):
        self.free = free
        self.refuse = refuse
        self.tried: list[Path] = []
        write = results.write_atomic

        def write_atomic(path: Path, data: bytes) -> None:
            if path.is_relative_to(root):
                self.tried.append(path)
            if path.is_relative_to(root) and self.refuse in path.name:
                if len(data) > self.free:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
                self.free -= len(data)
            write(path, data)

        monkeypatch.setattr(results, "write_atomic", write_atomic)
        monkeypatch.setattr(checkpoints, "write_atomic", write_atomic)

    def tries(self, prefix: str) -> int:
        return sum(path.name.startswith(prefix) for path in self.tried)


@pytest.fixture
def rescue_root(tmp_path, monkeypatch):
    """Where rows that the run's directory cannot take are saved (TMPDIR), kept apart per test."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(root))
    return root


def make_run(root):
    identity = {"problem": "toy", "estimator": "rloo", "k": 2, "seed": 0}
    root.mkdir(exist_ok=True)
    return Run.create(root, "toy-rloo", identity, ("objective",), {"config": {"dim": 3}})


def test_a_trace_flush_on_a_full_disk_fails_the_run_once_and_saves_the_buffered_rows(
    tmp_path, monkeypatch, rescue_root
):
    run = make_run(tmp_path / "runs")
    run.log(0, objective=0.0)
    run.flush()  # step 0 is on the disk
    disk = SmallDisk(monkeypatch, tmp_path / "runs", free=0, refuse="part-")
    with pytest.raises(RunFailed) as raised, run:
        run.log(1, objective=1.0)
        run.log(2, objective=2.0)
        run.flush()  # the disk is full: the job's loop stops here
    message = str(raised.value)
    assert "\n" not in message
    assert "No space left on device" in message and "saved to" in message
    assert disk.tries("part-") == 1  # never retried
    manifest = read_manifest(run.path)
    assert manifest["status"] == "failed"
    assert "No space left on device" in manifest["error"]
    assert manifest["last_step"] == 2 and manifest["rows_rescued"] == 2
    assert list(read_trace(run.path)["step"]) == [0]  # the rows flushed before stay readable
    rescued = read_trace_file(Path(manifest["rescued_to"]))
    assert list(rescued["step"]) == [1, 2] and list(rescued["objective"]) == [1.0, 2.0]
    assert Path(manifest["rescued_to"]).is_relative_to(rescue_root)


def read_trace_file(path: Path):
    import pandas as pd

    return pd.read_parquet(path)


def test_a_disk_full_even_for_the_manifest_still_records_failed_in_place(tmp_path, monkeypatch, rescue_root):
    run = make_run(tmp_path / "runs")
    run.log(0, objective=0.0)
    run.flush()
    SmallDisk(
        monkeypatch, tmp_path / "runs", free=0
    )  # no new file of any kind: not a part, not a new run.json
    with pytest.raises(RunFailed), run:
        run.log(1, objective=1.0)
        run.flush()
    manifest = json.loads((run.path / "run.json").read_text())  # rewritten over the old one
    assert manifest["status"] == "failed" and "No space left on device" in manifest["error"]


def test_a_value_the_trace_cannot_hold_fails_the_run_and_keeps_the_row_as_json(tmp_path, rescue_root):
    run = make_run(tmp_path / "runs")
    with pytest.raises(RunFailed, match="cannot write its trace"), run:
        run.log(2**64, objective=1.0)  # a step beyond int64: Arrow refuses it
        run.flush()
    manifest = read_manifest(run.path)
    assert manifest["status"] == "failed"
    assert json.loads(Path(manifest["rescued_to"]).read_text())[0]["objective"] == 1.0


def test_an_error_in_the_run_is_one_line_and_its_traceback_is_in_the_manifest(tmp_path):
    run = make_run(tmp_path / "runs")
    with pytest.raises(RunFailed) as raised, run:
        run.log(0, objective=0.0)
        raise ZeroDivisionError("division by zero\nsecond line")
    assert str(raised.value) == f"run {run.run_id} failed: ZeroDivisionError: division by zero"
    assert isinstance(raised.value.__cause__, ZeroDivisionError)  # the library keeps the cause
    manifest = read_manifest(run.path)
    assert manifest["status"] == "failed" and "ZeroDivisionError" in manifest["traceback"]
    assert list(read_trace(run.path)["step"]) == [0]


def test_a_checkpoint_write_on_a_full_disk_is_one_line_and_a_failed_run(tmp_path, monkeypatch, capsys):
    SmallDisk(monkeypatch, tmp_path / "runs", free=0, refuse="checkpoint")
    out = tmp_path / "runs"
    code = main([*TOY, "--checkpoint-every", "20", "--log-every", "5", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dcvbench: error: run ")
    assert "No space left on device" in lines[0] and "checkpoint.pt" in lines[0]
    (run_dir,) = results.find_runs(out)
    manifest = read_manifest(run_dir)
    assert manifest["status"] == "failed" and "checkpoint.pt" in manifest["error"]
    assert list(read_trace(run_dir)["step"]) == [0, 5, 10, 15, 20]  # flushed before the checkpoint


def test_the_cli_reports_a_full_trace_disk_in_one_line(tmp_path, monkeypatch, capsys, rescue_root):
    monkeypatch.setattr(results, "FLUSH_SECONDS", 0.0)
    disk = SmallDisk(monkeypatch, tmp_path / "runs", free=0, refuse="part-")
    out = tmp_path / "runs"
    assert main([*TOY, "--out", str(out)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0]
    assert disk.tries("part-") == 1
    (run_dir,) = results.find_runs(out)
    assert read_manifest(run_dir)["status"] == "failed"


# ---------------------------------------------------------------------------------------------
# A real file system, filled up under a running process.


def mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (needs the right to mount, as root in a container has); unmounted after."""
    point = tmp_path / "disk"
    point.mkdir()
    if not mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(point)):
        pytest.skip("this machine does not let the test mount a tmpfs; the injected faults above cover it")
    yield point
    subprocess.run(["umount", "-l", str(point)], capture_output=True)


def fill(point: Path) -> None:
    """Take every free block of the file system at ``point``."""
    handle = os.open(point / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 512, 1):  # big writes, then what is left below a block
            try:
                while True:
                    os.write(handle, b"\0" * size)
            except OSError as error:
                assert error.errno == errno.ENOSPC
    finally:
        os.close(handle)


def wait_for(predicate, process, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert process.poll() is None, f"the process ended ({process.returncode}) too early"
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_a_run_whose_disk_fills_up_ends_failed_in_one_line_with_its_rows(small_disk, tmp_path):
    out = small_disk / "runs"
    rescue = tmp_path / "tmp"
    rescue.mkdir()
    long_toy = [*TOY[:4], "1000000", *TOY[5:], "--log-every", "10", "--checkpoint-every", "100000000"]
    process = subprocess.Popen(
        [sys.executable, "-c", "from dcvbench.cli import main; main()", *long_toy, "--out", str(out)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(rescue), "OMP_NUM_THREADS": "1"},
    )
    try:
        wait_for(lambda: bool(list(out.glob("*/trace/part-*.parquet"))), process)
        fill(small_disk)
        _, stderr = process.communicate(timeout=120)  # the next flush (within 5 s) finds the disk full
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
    lines = stderr.strip().splitlines()
    assert process.returncode == 1 and len(lines) == 1, stderr
    assert "No space left on device" in lines[0]
    (run_dir,) = results.find_runs(out)
    manifest = read_manifest(run_dir)
    assert manifest["status"] == "failed" and "No space left on device" in manifest["error"]
    flushed = read_trace(run_dir)
    assert len(flushed) >= 1 and flushed["step"].is_monotonic_increasing
    rescued = read_trace_file(Path(manifest["rescued_to"]))
    assert rescued["step"].min() > flushed["step"].max()  # the rows after the last part, nowhere else
    assert rescued["step"].max() == manifest["last_step"]


# ---------------------------------------------------------------------------------------------
# A read-only file system: nothing to write, so one line and nothing changed.


@pytest.fixture
def read_only(tmp_path):
    """Make a directory read-only in place (a read-only bind mount); give it back writable after."""
    mounted = []

    def make(path: Path) -> None:
        if not (mount("--bind", str(path), str(path)) and mount("-o", "remount,ro,bind", str(path))):
            pytest.skip("this machine does not let the test make a read-only mount")
        mounted.append(path)

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_resume_and_plot_on_a_read_only_file_system_are_one_line(tmp_path, read_only, capsys):
    out = tmp_path / "runs"
    assert main([*TOY, "--checkpoint-every", "20", "--out", str(out)]) == 0
    (run_dir,) = results.find_runs(out)
    manifest = json.loads((run_dir / "run.json").read_text())
    manifest["status"] = "interrupted"  # as if stopped at its checkpoint, so that there is work left
    (run_dir / "run.json").write_text(json.dumps(manifest))
    before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    read_only(out)
    capsys.readouterr()
    assert main(["toy", "--resume", str(run_dir), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be written" in err[0] and "Read-only file system" in err[0]
    assert main(["plot", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Read-only file system" in err[0]
    assert {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()} == before
