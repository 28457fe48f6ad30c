"""Same seed → same numbers across the core's rebuild (issue #13).

``benchmarks/regression.py`` runs the toy (binary and categorical), a short VAE and variance studies
for every estimator at fixed seeds, through the command line, and compares every recorded value with
``benchmarks/regression/reference.parquet``, recorded at the commit before the rebuild. Equality is
exact, except for the categorical VAE's ``concrete`` rows, whose relaxed density now comes from
torch.distributions in another operation order (``regression.ROUNDING`` derives their tolerance).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "regression.py"


def _regression():
    spec = importlib.util.spec_from_file_location("regression", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_estimator_reproduces_the_reference_traces(tmp_path: Path) -> None:
    regression = _regression()
    current = regression.measure(tmp_path)
    assert regression.compare(pd.read_parquet(regression.REFERENCE), current) == []


def test_the_comparison_sees_a_changed_value(tmp_path: Path) -> None:
    regression = _regression()
    reference = pd.read_parquet(regression.REFERENCE)
    changed = reference.copy()
    changed.loc[changed["grad_var"].notna().idxmax(), "grad_var"] *= 1 + 1e-15
    assert regression.compare(reference, reference) == []
    assert any(line.startswith("grad_var") for line in regression.compare(reference, changed))


def test_the_rounding_tolerance_covers_only_its_rows() -> None:
    regression = _regression()
    reference = pd.read_parquet(regression.REFERENCE)
    rows = (reference["case"] == "vae-categorical") & (reference["estimator"] == "concrete")
    for estimator, expected in (("concrete", []), ("rloo", ["train_elbo"])):
        changed = reference.copy()
        where = (changed["case"] == "vae-categorical") & (changed["estimator"] == estimator)
        changed.loc[where, "train_elbo"] *= 1 + 4 * 2.0**-24  # 4 units in the last place of float32
        assert [line.split(":")[0] for line in regression.compare(reference, changed)] == expected
    beyond = reference.copy()
    beyond.loc[rows, "train_elbo"] *= 1 + 1e-4
    assert [line.split(":")[0] for line in regression.compare(reference, beyond)] == ["train_elbo"]
