"""Trace part names: a new part never takes an existing one's name, parts read in their order, and a
run that ends merges its parts into one without ever losing a row."""

import os
from pathlib import Path

import pandas as pd
import pytest

from dcvbench.results import TRACE_DIR, Run, consolidate_trace, read_trace, trace_parts


def make_run(root: Path) -> Run:
    identity = {"problem": "toy", "estimator": "rloo", "k": 2, "seed": 0}
    return Run.create(root, "toy-rloo", identity, ("objective",), {"config": {"dim": 3}})


def write_parts(run: Run, objectives: list[float]) -> None:
    """One flushed part per value, the ``i``-th value logged at step ``i``."""
    for step, objective in enumerate(objectives):
        run.log(step, objective=objective)
        run.flush()


def part_bytes(run_dir: Path) -> dict[str, bytes]:
    return {part.name: part.read_bytes() for part in trace_parts(run_dir)}


def test_a_resume_after_a_deleted_part_overwrites_no_part(tmp_path):
    run = make_run(tmp_path)  # killed after three flushes: its parts are not consolidated
    write_parts(run, [0.0, 1.0, 2.0])
    trace_parts(run.path)[1].unlink()  # a part in the middle: the parts are now fewer than their numbers
    kept = part_bytes(run.path)
    resumed = Run.reopen(run.path, ("objective",), resumed_from=2)
    resumed.log(3, objective=3.0)
    resumed.flush()
    after = part_bytes(run.path)
    assert {name: after[name] for name in kept} == kept  # no existing part rewritten
    assert len(after) == len(kept) + 1
    assert list(read_trace(run.path)["objective"]) == [0.0, 2.0, 3.0]


def test_parts_read_in_the_order_of_their_numbers_past_any_width(tmp_path):
    # Both parts hold step 0; the newer one (the larger number) wins, as after a resume.
    run = make_run(tmp_path)
    run.next_part = 99_999
    write_parts(run, [1.0])
    write_parts(run, [2.0])
    names = [part.name for part in trace_parts(run.path)]
    assert names == ["part-0000099999.parquet", "part-0000100000.parquet"]
    assert names == sorted(names)  # the names sort as the numbers do, for any other reader too
    assert list(read_trace(run.path)["objective"]) == [2.0]


def test_a_run_with_five_digit_part_names_reads_in_order_and_resumes_after_them(tmp_path):
    # Runs written before the names had ten digits: part-99999 then part-100000 (which sorts first
    # by name), and a resume adds a part after both.
    run = make_run(tmp_path)
    write_parts(run, [1.0, 2.0])
    trace_dir = run.path / TRACE_DIR
    for part, number in zip(trace_parts(run.path), [99_999, 100_000], strict=True):
        part.rename(trace_dir / f"part-{number:05d}.parquet")
    assert [part.name for part in trace_parts(run.path)] == ["part-99999.parquet", "part-100000.parquet"]
    assert list(read_trace(run.path)["objective"]) == [1.0, 2.0]
    resumed = Run.reopen(run.path, ("objective",), resumed_from=1)
    resumed.log(1, objective=5.0)  # the resumed run writes step 1 again: the new row wins
    resumed.flush()
    assert trace_parts(run.path)[-1].name == "part-0000100001.parquet"
    assert list(read_trace(run.path)["objective"]) == [1.0, 5.0]


def test_a_run_that_ends_reads_from_one_part_with_the_same_rows(tmp_path):
    with make_run(tmp_path) as run:
        write_parts(run, [0.0, 1.0, 2.0, 3.0])
        run.log(2, objective=5.0)  # step 2 written again, as a resumed run does: the newest row wins
        run.flush()
        before = read_trace(run.path)
        assert len(trace_parts(run.path)) == 5
    assert [part.name for part in trace_parts(run.path)] == ["part-0000000005.parquet"]
    pd.testing.assert_frame_equal(read_trace(run.path), before)
    assert list(before["objective"]) == [0.0, 1.0, 5.0, 3.0]


def test_a_run_stopped_while_consolidating_loses_no_row(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    write_parts(run, [0.0, 1.0, 2.0])
    before = read_trace(run.path)
    deleted = []

    def unlink_then_stop(self, missing_ok=False):
        if deleted:
            raise KeyboardInterrupt  # stopped after the merged part is in place and one old part gone
        deleted.append(self)
        os.remove(self)

    monkeypatch.setattr(Path, "unlink", unlink_then_stop)
    with pytest.raises(KeyboardInterrupt):
        consolidate_trace(run.path)
    monkeypatch.undo()
    assert len(trace_parts(run.path)) == 3  # two old parts and the merged one
    pd.testing.assert_frame_equal(read_trace(run.path), before)
    consolidate_trace(run.path)  # the next end (a resume's) finishes the job
    assert len(trace_parts(run.path)) == 1
    pd.testing.assert_frame_equal(read_trace(run.path), before)
