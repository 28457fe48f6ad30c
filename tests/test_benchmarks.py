"""The benchmark command runs end to end and writes its results (quick mode).

Performance is measured by ``benchmarks/run.py``, never asserted here: on a shared machine a timing
bar in a test fails for reasons that have nothing to do with the code. What is checked is that every
section ran and the arithmetic that does not depend on the machine (the multiply-add floor).
"""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("benchmark") / "results.json"
    done = subprocess.run(
        # --check: 4 rounds can never reject a bar (p ≥ 1/16), so the quick run passes it by design.
        [sys.executable, str(RUN), "--quick", "--check", "--out", str(out)],
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
        "successor_step",
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
    successors = {(row["latent"], row["estimator"]) for row in results["successor_step"]}
    assert successors == {
        *(("binary", name) for name in ("rloo", "rloo-dcv", "rodeo", "indecater")),
        *(("categorical", name) for name in ("rloo", "rloo-dcv", "carms", "indecater")),
    }
    assert all(row["cpu_ratio_to_rloo"] > 0 for row in results["successor_step"])
    indecater = next(
        r for r in results["successor_step"] if (r["latent"], r["estimator"]) == ("binary", "indecater")
    )
    assert indecater["evals"] == 2 * (1 + 200)  # K outer samples, each with its D flips


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


def _script(name: str):
    """A benchmark script as a module (benchmarks/ is no package: its scripts import each other)."""
    sys.path.insert(0, str(RUN.parent))
    try:
        spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", RUN.parent / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(RUN.parent))
    return module


def test_the_sign_test_is_the_binomial_tail():
    common = _script("common")
    # 3 of 4 rounds above the bar: P(X ≥ 3), X ~ Binomial(4, ½) = (4 + 1) / 16.
    assert common.sign_test_above([1.2, 1.3, 1.0, 1.25], bar=1.1) == {
        "bar": 1.1,
        "rounds": 4,
        "above": 3,
        "p_value": 5 / 16,
    }
    assert common.sign_test_above([1.2] * 20, bar=1.1)["p_value"] == 2.0**-20
    assert common.sign_test_above([1.0] * 20, bar=1.1)["p_value"] == 1.0


def test_check_fails_a_bar_missed_beyond_noise_and_passes_one_met():
    run, common = _script("run"), _script("common")
    rng = random.Random(0)

    def ratio(arch: str, typical: float, rounds: int = 60) -> dict:
        ratios = [typical * rng.uniform(0.9, 1.1) for _ in range(rounds)]  # load noise of ±10 %
        return {"arch": arch, "k": 2, "check": common.sign_test_above(ratios, bar=1.10)}

    met, missed = ratio("nonlinear", 1.02), ratio("nonlinear", 1.30)
    assert run.missed_bars({"vae_step_ratio": [met, missed]}) == [missed]
    # A ratio right at the bar is not failed by chance: about half its rounds are above it.
    assert run.missed_bars({"vae_step_ratio": [ratio("nonlinear", 1.10)]}) == []


def test_the_bars_are_design_s():
    common = _script("common")
    assert common.step_bar("nonlinear", floor=1.02) == 1.10
    assert common.step_bar("linear", floor=4 / 3) == 1.10 * 4 / 3
