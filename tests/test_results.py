"""Run directories, manifests and append-only traces."""

import json
import os
import stat
import subprocess
import sys
import time

import pandas as pd
import pytest

from dcvbench import results
from dcvbench.cli import main
from dcvbench.results import ResultsError, Run, find_runs, read_manifest, read_trace
from dcvbench.runtime import ConfigError


def make_run(root, **identity):
    identity = {"problem": "toy", "estimator": "rloo", "k": 2, "seed": 0, **identity}
    return Run.create(root, "toy-rloo", identity, ("objective", "grad_var"), {"config": {"dim": 3}})


def test_a_run_writes_manifest_and_trace_and_reads_back(tmp_path):
    with make_run(tmp_path) as run:
        assert read_manifest(run.path)["status"] == "running"
        run.log(0, objective=1.0, grad_var=2.0)
        run.log(10, objective=1.5)  # a metric not measured at a step is null
    manifest = read_manifest(run.path)
    assert manifest["status"] == "finished"
    assert manifest["last_step"] == 10
    assert manifest["config"] == {"dim": 3}
    trace = read_trace(run.path)
    assert list(trace["step"]) == [0, 10]
    assert list(trace["estimator"]) == ["rloo", "rloo"]
    assert trace["grad_var"].isna().tolist() == [False, True]
    assert find_runs(tmp_path) == [run.path]


def test_each_flush_adds_a_part_and_never_rewrites_one(tmp_path):
    run = make_run(tmp_path)  # while it runs (its end consolidates the parts)
    run.log(0, objective=1.0)
    run.flush()
    first = (run.path / "trace" / "part-0000000000.parquet").read_bytes()
    run.log(1, objective=2.0)
    run.flush()
    run.flush()  # nothing buffered: no empty part
    parts = sorted((run.path / "trace").glob("part-*.parquet"))
    assert [p.name for p in parts] == ["part-0000000000.parquet", "part-0000000001.parquet"]
    assert parts[0].read_bytes() == first
    assert list(read_trace(run.path)["objective"]) == [1.0, 2.0]


def test_flushes_by_time_so_a_killed_run_keeps_its_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "FLUSH_SECONDS", 0.0)
    run = make_run(tmp_path)
    run.log(0, objective=1.0)  # flushed at once; the run is never finished (as if killed)
    assert list(read_trace(run.path)["objective"]) == [1.0]
    assert read_manifest(run.path)["status"] == "running"


def test_interrupt_and_failure_are_recorded_with_the_rows_so_far(tmp_path):
    with pytest.raises(KeyboardInterrupt), make_run(tmp_path) as run:
        run.log(0, objective=1.0)
        raise KeyboardInterrupt
    assert read_manifest(run.path)["status"] == "interrupted"
    assert len(read_trace(run.path)) == 1
    with pytest.raises(RuntimeError), make_run(tmp_path) as failed:
        raise RuntimeError("boom")
    manifest = read_manifest(failed.path)
    assert manifest["status"] == "failed"
    assert "boom" in manifest["error"]


def test_undeclared_metric_is_refused(tmp_path):
    with make_run(tmp_path) as run, pytest.raises(KeyError):
        run.log(0, nonsense=1.0)


def test_run_directories_are_unique(tmp_path):
    paths = {make_run(tmp_path).path for _ in range(20)}
    assert len(paths) == 20


def test_a_name_taken_meanwhile_is_never_reused(tmp_path, monkeypatch):
    # Another invocation made the same directory in the same second with the same random suffix:
    # the exclusive mkdir notices, and the run takes the next suffix instead of sharing it.
    taken = results.create_run_dir(tmp_path, "toy-rloo")
    (taken / "theirs").write_text("precious")
    suffixes = iter([taken.name.rsplit("-", 1)[1], "c0ffee"])
    monkeypatch.setattr(results.secrets, "token_hex", lambda nbytes: next(suffixes))
    monkeypatch.setattr(results, "datetime", _FrozenClock(taken.name))
    mine = results.create_run_dir(tmp_path, "toy-rloo")
    assert mine != taken and mine.name.endswith("-c0ffee")
    assert [path.name for path in taken.iterdir()] == ["theirs"]


class _FrozenClock:
    """Stands in for ``datetime`` so that the next run directory gets ``name``'s timestamp."""

    def __init__(self, name: str):
        self.stamp = "-".join(name.split("-")[-3:-1])  # <name>-<YYYYmmdd>-<HHMMSS>-<suffix>

    def now(self):
        return self

    def strftime(self, _format: str) -> str:
        return self.stamp


def test_extra_identity_labels_are_string_columns(tmp_path):
    with make_run(tmp_path, grad_var_method="resample") as run:
        run.log(0, grad_var=1.0)
    assert read_trace(run.path)["grad_var_method"].tolist() == ["resample"]


def test_output_root_must_be_a_writable_directory(tmp_path):
    file = tmp_path / "file"
    file.write_text("keep me")
    with pytest.raises(ConfigError, match="is a file"):
        results.prepare_output_root(file)
    with pytest.raises(ConfigError, match="cannot write"):
        results.prepare_output_root(file / "below")
    assert file.read_text() == "keep me"
    assert results.prepare_output_root(tmp_path / "new" / "dir").is_dir()


def test_corrupt_manifest_and_trace_raise_results_error(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "trace").mkdir(parents=True)
    (run_dir / "run.json").write_text("{not json")
    with pytest.raises(ResultsError, match="not readable JSON"):
        read_manifest(run_dir)
    (run_dir / "run.json").write_text(json.dumps({"something": "else"}))
    with pytest.raises(ResultsError, match="not a dcvbench manifest"):
        read_manifest(run_dir)
    (run_dir / "trace" / "part-00000.parquet").write_bytes(b"garbage")
    with pytest.raises(ResultsError, match="unreadable trace"):
        read_trace(run_dir)


def test_write_table_is_readable_with_schema_version(tmp_path):
    with make_run(tmp_path) as run:
        path = run.write_table("variance.parquet", results.table_from_records([{"a": 1.0}]))
    assert pd.read_parquet(path)["a"].tolist() == [1.0]
    import pyarrow.parquet as pq

    assert pq.read_schema(path).metadata[b"dcvbench_schema_version"] == b"1"


def test_read_trace_can_skip_an_unreadable_part_and_keep_the_rest(tmp_path):
    run = make_run(tmp_path)  # two parts, as a run has them until it ends
    run.log(0, objective=1.0)
    run.flush()
    run.log(1, objective=2.0)
    run.flush()
    bad = run.path / "trace" / "part-0000000000.parquet"
    bad.write_bytes(b"garbage")
    reported = []
    trace = read_trace(run.path, lambda part, reason: reported.append(part))
    assert list(trace["step"]) == [1]
    assert reported == [bad]
    with pytest.raises(ResultsError, match="part-0000000000"):
        read_trace(run.path)


@pytest.fixture(params=[0o022, 0o077], ids=["umask-022", "umask-077"])
def umask(request):
    """The process's umask set to each value in turn, and restored."""
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def test_every_file_and_directory_of_a_run_follows_the_umask(tmp_path, umask):
    # A shared --out (a Dask cluster's) is readable to others exactly when the user's umask says so:
    # files get 0666 and directories 0777, less the umask, as a plain open() and mkdir() give them.
    out = tmp_path / "runs"
    tiny = ["--dim", "4", "--seed", "1", "--device", "cpu", "--out", str(out), "-q"]
    toy = ["toy", *tiny, "--steps", "4", "--var-samples", "4", "--checkpoint-every", "2"]
    assert main([*toy, "--estimator", "rloo"]) == 0  # run.json, trace parts, checkpoint.pt
    assert main(["variance", *tiny, "--estimator", "rloo", "--k", "2", "--samples", "8"]) == 0
    assert main(["plot", str(out), "--out", str(tmp_path / "plots")]) == 0  # figures and tables
    made = list(tmp_path.rglob("*"))
    names = {path.name for path in made}
    assert {"run.json", "checkpoint.pt", "variance.parquet", "summary.md"} <= names
    assert any(results.PART_NAME.fullmatch(name) for name in names)  # the trace's (consolidated) part
    modes = {path.relative_to(tmp_path): stat.S_IMODE(path.stat().st_mode) for path in made}
    expected = {path.relative_to(tmp_path): 0o777 if path.is_dir() else 0o666 for path in made}
    assert modes == {path: mode & ~umask for path, mode in expected.items()}


# A child that opens a run and waits, as a process writing a run does until it is killed.
RUN_AND_WAIT = """
import sys, time
from pathlib import Path
from dcvbench.results import Run
identity = {"problem": "toy", "estimator": "rloo", "k": 2, "seed": 0}
Run.create(Path(sys.argv[1]), "toy-rloo", identity, ("objective",), {"config": {}})
time.sleep(600)
"""


def test_a_running_run_whose_process_was_killed_reads_as_stale(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", RUN_AND_WAIT, str(tmp_path)])
    try:
        deadline = time.monotonic() + 60
        while not find_runs(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        (run_dir,) = find_runs(tmp_path)
        manifest = read_manifest(run_dir)
        assert manifest["process"]["pid"] == process.pid
        assert results.run_status(manifest) == "running"  # alive
    finally:
        process.kill()  # SIGKILL: no clean-up runs, the manifest keeps saying running
        process.wait()
    manifest = read_manifest(run_dir)
    assert manifest["status"] == "running"
    assert results.run_status(manifest) == results.STALE


def test_a_run_status_that_cannot_be_checked_stays_as_written(tmp_path):
    run = make_run(tmp_path)
    manifest = read_manifest(run.path)
    assert results.run_status(manifest) == "running"  # this process: alive
    elsewhere = {**manifest, "process": {**manifest["process"], "host": "another-host"}}
    assert results.run_status(elsewhere) == "running"  # another host's processes are not visible
    assert results.run_status({**manifest, "process": None}) == "running"  # written before processes
    reused = {**manifest, "process": {**manifest["process"], "pid_started": -1}}
    assert results.run_status(reused) == results.STALE  # its process id now names another process
    run.finish("interrupted")
    assert results.run_status(read_manifest(run.path)) == "interrupted"
