"""The benchmark command runs end to end and writes its results (quick mode).

Performance is measured by ``benchmarks/run.py``, never asserted here: on a shared machine a timing
bar in a test fails for reasons that have nothing to do with the code. What is checked is that every
section ran and the arithmetic that does not depend on the machine (the multiply-add floor).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("benchmark") / "results.json"
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def test_quick_run_writes_every_section_with_provenance(quick):
    results, _ = quick
    assert {
        "schema_version",
        "command",
        "machine",
        "torch_threads",
        "load_average",
        "seconds",
        "plan",
        "vae_step",
        "vae_step_ratio",
        "toy_variance",
        "vae_variance",
        "memory",
    } <= results.keys()
    assert results["quick"] is True
    assert {"cpu_model", "cores", "torch", "git_commit"} <= results["machine"].keys()
    assert len(results["load_average"]["before"]) == len(results["load_average"]["after"]) == 3


def test_quick_run_times_each_estimator_and_section(quick):
    results, stdout = quick
    timed = {(row["arch"], row["k"], row["estimator"]) for row in results["vae_step"]}
    for name in ("rloo", "rloo-dcv", "disarm", "arms", "concrete"):
        assert ("nonlinear", 2, name) in timed
        assert any(row["estimator"] == name for row in results["toy_variance"])
        assert any(row["estimator"] == name for row in results["vae_variance"])
    assert all(row["cpu_ms"] > 0 for row in results["vae_step"])
    assert all(row["wall_s"] > 0 for row in results["toy_variance"])
    assert all(row["speedup_wall"] > 0 for row in results["vae_variance"])
    assert results["memory"] and all(row["peak_mib"] > 0 for row in results["memory"])
    assert len({row["pid"] for row in results["memory"]}) == len(results["memory"])  # a process each
    assert "| arch | K |" in stdout  # the Markdown tables


def test_multiply_add_floor_of_the_nonlinear_step(quick):
    # Layers 784·200, 200·200, 200·200 (Σ 236,800); per row: forward and weight gradient of each,
    # input gradient of all but the first: encoder 100 rows × 553,600; decoder (mirrored) 200 rows
    # × 670,400. rloo-dcv adds the decoder's input gradient: 200 rows × 200·200 (DESIGN §3.1).
    ratio = next(r for r in quick[0]["vae_step_ratio"] if (r["arch"], r["k"]) == ("nonlinear", 2))
    assert ratio["macs_rloo"] == 100 * 553_600 + 200 * 670_400 == 189_440_000
    assert ratio["macs_rloo_dcv"] == 189_440_000 + 200 * 40_000
    assert ratio["floor"] == pytest.approx(197.44 / 189.44)


def test_layers_benchmark_times_every_estimator_on_every_architecture():
    script = RUN.parent / "layers.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for arch in ("200H-784V", "200H~784V", "200H-200H-784V", "200H~200H~784V"):
        assert f"\n{arch}\n" in done.stdout
    assert done.stdout.count("| vimco |") == 4 and done.stdout.count("| rloo | ") == 4
