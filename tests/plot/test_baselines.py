"""The committed baselines: every figure the README and docs show can be redrawn."""

import pytest

from dcvbench.cli import main
from tests.plot.conftest import REPO


def test_plot_baselines_produces_every_figure(tmp_path, capsys):
    baselines = REPO / "baselines"
    if not any(baselines.rglob("run.json")):
        pytest.skip("no committed baselines")
    out = tmp_path / "figures"
    # svg: the same figures as png without rasterising them, several seconds quicker for ~100 figures.
    assert main(["plot", str(baselines), "--out", str(out), "--format", "svg", "-q"]) == 0
    assert capsys.readouterr().err == ""
    expected = {
        "toy-separable-d200-k2-grad_var.svg",
        "toy-separable-d200-k2-objective.svg",
        "toy-separable-d200-k2-alpha.svg",
        "toy-separable-d200-k2-sec_per_step.svg",
        "vae-mnist-subset-linear-k2-grad_var_resample.svg",
        "vae-mnist-subset-linear-k2-grad_var_ema.svg",
        "vae-mnist-subset-linear-k2-train_elbo.svg",
        "vae-mnist-subset-linear-k2-test_bound.svg",
        "vae-mnist-subset-linear-k2-alpha.svg",
        "vae-mnist-subset-linear-k2-sec_per_step.svg",
        "variance-toy-separable-d200-theta0.7-ratio.svg",
        "variance-toy-separable-d200-theta0.7-cost.svg",
        # baselines/successors: the RODEO figure's group
        "vae-mnist-subset-nonlinear-k2-grad_var_ema.svg",
        "vae-mnist-subset-nonlinear-k2-grad_var_resample.svg",
    }
    drawn = {path.name for path in out.glob("*.svg")}
    assert expected <= drawn
    # The Concrete paper's runs (baselines/concrete-paper): each group's bound, and the temperature study.
    for group in (
        "vae-mnist-subset-200H~200H~784V-elbo-k2",
        "predict-mnist-subset-392V-240H-240H-392V-iwae-k5",
    ):
        assert f"{group}-test_bound.svg" in drawn
    assert {
        "vae-mnist-subset-linear-elbo-k2-temperature-study.svg",
        "predict-mnist-subset-392V-240H-392V-elbo-k2-temperature-study.svg",
    } <= drawn
    assert {"summary.md", "summary.csv", "variance-summary.csv"} <= {path.name for path in out.iterdir()}
