"""The toy job end to end, through the library."""

from dataclasses import replace

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import dcvbench.jobs.toy
from dcvbench.checkpoints import CHECKPOINT, load_checkpoint
from dcvbench.config import ToyConfig, ToyProblem
from dcvbench.jobs.toy import resume_toy, run_toy
from dcvbench.problems.toy import make_objective
from dcvbench.results import TIMING_COLUMNS, read_manifest, read_trace
from dcvbench.runtime import ConfigError
from tests.jobs.conftest import RecordingProgress

SMALL = ToyConfig(
    problem=ToyProblem(dim=10),
    estimators=("rloo", "rloo-dcv"),
    steps=30,
    log_every=5,
    var_every=10,
    var_samples=200,
    device="cpu",
)


def test_toy_writes_one_finished_run_per_estimator_and_seed(tmp_path):
    config = replace(SMALL, seeds=(1, 2), out=str(tmp_path))
    summaries = run_toy(config)
    assert [(s.estimator, s.seed) for s in summaries] == [
        ("rloo", 1),
        ("rloo-dcv", 1),
        ("rloo", 2),
        ("rloo-dcv", 2),
    ]
    for summary in summaries:
        manifest = read_manifest(summary.path)
        assert manifest["status"] == "finished"
        assert manifest["objective_direction"] == "maximize"
        assert manifest["config"]["problem"]["dim"] == 10
        assert (manifest["latent"], manifest["config"]["problem"]["classes"]) == ("binary", None)
        assert {"torch", "python", "dcvbench"} <= set(manifest["versions"])
        trace = read_trace(summary.path)
        assert list(trace["step"]) == [0, 5, 10, 15, 20, 25, 30]
        measured = trace.dropna(subset=["grad_var"])
        assert list(measured["step"]) == [0, 10, 20, 30]
        assert (measured["grad_var"] > 0).all()
        assert set(trace["grad_var_method"]) == {"resample"} and set(trace["latent"]) == {"binary"}
    # What an estimator reports becomes its run's columns: rloo-dcv's α, and nothing for rloo.
    dcv = read_trace(summaries[1].path)
    assert dcv["alpha"].notna().all()
    assert "alpha" not in read_trace(summaries[0].path)


def test_objective_column_is_the_exact_expectation_and_it_improves(tmp_path):
    config = replace(SMALL, estimators=("exact-baseline",), steps=200, out=str(tmp_path))
    (summary,) = run_toy(config)
    trace = read_trace(summary.path)
    # At η = 0 every θ is ½: E f = ((1−t)² + t²)/2 exactly.
    t = config.problem.target
    assert trace["objective"].iloc[0] == pytest.approx(((1 - t) ** 2 + t**2) / 2, rel=1e-12)
    assert trace["objective"].iloc[-1] > trace["objective"].iloc[0]


def test_same_seed_same_trace(tmp_path):
    config = replace(SMALL, estimators=("rloo-dcv", "disarm"), seeds=(5,))
    first = run_toy(replace(config, out=str(tmp_path / "a")))
    second = run_toy(replace(config, out=str(tmp_path / "b")))
    for a, b in zip(first, second, strict=True):
        pd.testing.assert_frame_equal(
            read_trace(a.path).drop(columns=TIMING_COLUMNS), read_trace(b.path).drop(columns=TIMING_COLUMNS)
        )


def test_minimize_runs_downhill(tmp_path):
    config = replace(SMALL, estimators=("exact-baseline",), steps=200, maximize=False, out=str(tmp_path))
    (summary,) = run_toy(config)
    trace = read_trace(summary.path)
    assert read_manifest(summary.path)["objective_direction"] == "minimize"
    assert trace["objective"].iloc[-1] < trace["objective"].iloc[0]


def test_divergence_stops_the_run_cleanly_and_says_why(tmp_path, monkeypatch):
    settings = {"alpha": float("inf")}  # refused by the config…
    with pytest.raises(ValueError, match="--alpha"):
        replace(SMALL, estimator_settings=settings)
    # …so make the objective itself blow up: a NaN target poisons every gradient.
    config = replace(SMALL, estimators=("rloo",), out=str(tmp_path))
    objective = make_objective("separable", 10, float("nan"))
    monkeypatch.setattr("dcvbench.jobs.toy.make_objective", lambda *args, **kwargs: objective)
    (summary,) = run_toy(config)
    manifest = read_manifest(summary.path)
    assert summary.status == "diverged" == manifest["status"]
    assert manifest["diverged_at"] == 5
    assert manifest["non_finite"] in ("logits", "gradient")
    assert list(read_trace(summary.path)["step"]) == [0]


def test_divergence_stops_only_that_run(tmp_path, poison_estimator):
    # rloo's 7th training estimate is NaN: its logits are NaN from step 7, seen at the row of step 10.
    poison_estimator(dcvbench.jobs.toy, "rloo", rows=1, after=7)
    config = replace(SMALL, estimators=("rloo", "rloo-dcv"), out=str(tmp_path))
    diverged, finished = run_toy(config)
    manifest = read_manifest(diverged.path)
    assert (diverged.status, manifest["diverged_at"], manifest["non_finite"]) == ("diverged", 10, "logits")
    assert list(read_trace(diverged.path)["step"]) == [0, 5]
    assert finished.status == "finished" == read_manifest(finished.path)["status"]
    assert list(read_trace(finished.path)["step"]) == [0, 5, 10, 15, 20, 25, 30]


@pytest.mark.parametrize(
    "settings",
    [
        {"alpha_optimizer": "rmsprop", "alpha_lr": 5e-4},  # α and RMSprop's state
        {"alpha_learning": "optimal"},  # α from running averages (buffers)
    ],
    ids=["sgd", "optimal"],
)
def test_interrupted_run_resumes_to_the_uninterrupted_trace(tmp_path, interrupt_at, settings):
    config = replace(
        SMALL, estimators=("rloo-dcv",), steps=60, checkpoint_every=20, estimator_settings=settings
    )
    (full,) = run_toy(replace(config, out=str(tmp_path / "full")))
    with pytest.raises(KeyboardInterrupt):
        run_toy(replace(config, out=str(tmp_path / "cut")), progress=interrupt_at(47))
    (cut_dir,) = (tmp_path / "cut").iterdir()
    manifest = read_manifest(cut_dir)
    assert (manifest["status"], manifest["last_step"]) == ("interrupted", 45)
    assert len(read_trace(cut_dir)) == 10  # steps 0, 5, …, 45: everything measured was kept
    assert load_checkpoint(cut_dir / CHECKPOINT, torch.device("cpu"))["step"] == 40

    resumed = resume_toy(cut_dir)
    assert (resumed.status, resumed.last_step) == ("finished", 60)
    assert read_manifest(cut_dir)["resumes"][0]["from_step"] == 40
    pd.testing.assert_frame_equal(
        read_trace(full.path).drop(columns=TIMING_COLUMNS), read_trace(cut_dir).drop(columns=TIMING_COLUMNS)
    )
    assert resumed.metrics == pytest.approx(full.metrics | {"sec_per_step": resumed.metrics["sec_per_step"]})


def test_a_run_written_with_a_column_its_estimator_no_longer_reports_resumes(tmp_path, interrupt_at):
    # Before estimators declared their stats, every toy run had an `alpha` column (null for rloo).
    config = replace(SMALL, estimators=("rloo",), steps=60, checkpoint_every=20, out=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        run_toy(config, progress=interrupt_at(47))
    (cut_dir,) = tmp_path.iterdir()
    for part in (cut_dir / "trace").glob("part-*.parquet"):
        table = pq.read_table(part)
        alpha = pa.array([None] * len(table), pa.float64())
        pq.write_table(table.add_column(table.schema.get_field_index("sec_per_step"), "alpha", alpha), part)
    resumed = resume_toy(cut_dir)
    assert (resumed.status, resumed.last_step) == ("finished", 60)
    trace = pd.read_parquet(cut_dir / "trace")  # every part on one schema: one read of the directory
    assert trace["alpha"].isna().all() and trace["step"].max() == 60


def test_checkpoints_are_written_at_row_steps(tmp_path):
    config = replace(SMALL, estimators=("rloo",), steps=12, checkpoint_every=7, out=str(tmp_path))
    (summary,) = run_toy(config)
    # Step 7 is no log or variance step, but a checkpoint step is always a row: the trace reaches it.
    assert list(read_trace(summary.path)["step"]) == [0, 5, 7, 10, 12]
    assert load_checkpoint(summary.path / CHECKPOINT, torch.device("cpu"))["step"] == 7


def test_resume_refuses_what_it_cannot_resume(tmp_path):
    config = replace(SMALL, estimators=("rloo",), steps=10, out=str(tmp_path))
    (summary,) = run_toy(config)  # 10 steps, no checkpoint (every 500)
    manifest_path = summary.path / "run.json"  # as if stopped (a finished run resumes as a no-op)
    manifest_path.write_text(manifest_path.read_text().replace('"finished"', '"interrupted"'))
    with pytest.raises(ConfigError, match=r"has no checkpoint\.pt"):
        resume_toy(summary.path)
    manifest_path.write_text(manifest_path.read_text().replace('"job": "toy"', '"job": "vae"'))
    with pytest.raises(ConfigError, match="is not a toy run"):
        resume_toy(summary.path)


def test_a_job_plans_its_runs_and_reports_every_step(tmp_path):
    progress = RecordingProgress()
    run_toy(replace(SMALL, seeds=(1, 2), out=str(tmp_path)), progress)
    assert progress.plans == [(4, 4 * SMALL.steps)]
    assert progress.starts == [(SMALL.steps, 0)] * 4
    assert progress.advanced == 4 * SMALL.steps


def test_a_resumed_run_plans_only_the_steps_it_has_left(tmp_path, interrupt_at):
    with pytest.raises(KeyboardInterrupt):
        run_toy(replace(SMALL, checkpoint_every=10, out=str(tmp_path)), progress=interrupt_at(17))
    (run_dir,) = tmp_path.iterdir()
    progress = RecordingProgress()
    threads = 2 if torch.get_num_threads() != 2 else 1  # another machine's: the resume records it
    resume_toy(run_dir, progress, threads=threads)
    assert read_manifest(run_dir)["resumes"][0]["torch_threads"] == threads
    assert progress.plans == [(1, SMALL.steps - 10)]
    assert progress.starts == [(SMALL.steps, 10)]
    assert progress.advanced == SMALL.steps - 10


def test_threads_reach_torch_and_the_manifest_and_are_restored(tmp_path):
    before = torch.get_num_threads()
    wanted = 2 if before != 2 else 1
    seen = []
    build = dcvbench.jobs.toy.build_training

    def build_and_look(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return build(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dcvbench.jobs.toy, "build_training", build_and_look)
        (summary,) = run_toy(replace(SMALL, estimators=("rloo",), threads=wanted, out=str(tmp_path)))
    manifest = read_manifest(summary.path)
    assert seen == [wanted]
    assert manifest["config"]["threads"] == wanted
    assert manifest["versions"]["torch_threads"] == wanted
    assert torch.get_num_threads() == before


def test_a_run_summarises_its_step_time_by_the_median_of_its_rows(tmp_path):
    (summary,) = run_toy(replace(SMALL, estimators=("rloo",), out=str(tmp_path)))
    rows = read_trace(summary.path)["sec_per_step"].dropna()
    assert len(rows) > 2
    assert summary.metrics["sec_per_step"] == pytest.approx(float(rows.median()), rel=0, abs=0)
