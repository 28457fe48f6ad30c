"""What the command line shows while and after a job runs: progress, and the final tables."""

from pathlib import Path

from dcvbench.cli.console import STEP_TIME, RichProgress, report_toy_runs
from dcvbench.jobs import RunSummary


def test_progress_numbers_the_runs_and_adds_a_bar_for_the_whole_job():
    progress = RichProgress(quiet=True)  # disabled display: the tasks are kept all the same
    progress.plan(3, 30)
    for seed in range(3):
        progress.start(f"toy rloo seed={seed}", 10)
        progress.advance(4)
        progress.advance(6)
    overall, *runs = progress.bar.tasks
    assert (overall.description, overall.total, overall.completed) == ("all 3 runs", 30, 30)
    assert [task.description for task in runs] == [f"run {i + 1} of 3: toy rloo seed={i}" for i in range(3)]
    assert all(task.completed == 10 for task in runs)


def test_one_run_has_one_bar_which_starts_where_a_resumed_run_was():
    progress = RichProgress(quiet=True)
    progress.plan(1, 6)
    progress.start("toy rloo (resumed at 4)", 10, 4)
    progress.advance(6)
    (task,) = progress.bar.tasks
    assert (task.description, task.completed, task.total) == ("toy rloo (resumed at 4)", 10, 10)


def summary(estimator: str, seed: int, variance: float, seconds: float) -> RunSummary:
    metrics = {"objective": 0.25, "grad_var": variance, "sec_per_step": seconds}
    path = Path("/runs") / f"{estimator}-{seed}"
    return RunSummary(f"{estimator}-{seed}", path, estimator, 2, seed, "finished", 10, metrics)


def test_the_toy_table_lists_runs_in_registry_order_with_the_median_step_time(capsys):
    # Given out of order: the table follows the registry (rloo before rloo-dcv before disarm), then seeds.
    runs = [summary("disarm", 0, 3e-8, 0.002), summary("rloo-dcv", 1, 1e-9, 0.004)]
    runs += [summary("rloo", 1, 2e-8, 0.001), summary("rloo", 0, 4e-8, 0.003)]
    report_toy_runs("toy", runs, quiet=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if "│" in line or "┃" in line]
    assert STEP_TIME in lines[0]
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines[1:]]
    assert [(row[0], row[1]) for row in rows] == [
        ("rloo", "0"),
        ("rloo", "1"),
        ("rloo-dcv", "1"),
        ("disarm", "0"),
    ]
    # Each run against rloo at its own seed.
    assert [row[5] for row in rows] == ["1", "1", "0.05", "0.75"]
    assert [row[6] for row in rows] == ["0.003", "0.001", "0.004", "0.002"]
