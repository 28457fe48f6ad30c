"""Settings validation: bad values are refused at construction, naming the value."""

import pytest

from dcvbench.config import ToyConfig, ToyProblem, VarianceConfig, theta_probability
from dcvbench.estimators import EstimatorSettings
from dcvbench.runtime import ConfigError


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ToyProblem(dim=0), "--dim must be positive"),
        (lambda: ToyProblem(dim=-3), "--dim must be positive"),
        (lambda: ToyProblem(objective="cubic"), "unknown objective 'cubic'"),
        (lambda: ToyConfig(estimators=("nope",)), "unknown estimator 'nope'; choose from: reinforce"),
        (lambda: ToyConfig(estimators=("rloo",), k=1), "K must be ≥ 2 for rloo, got 1"),
        (lambda: ToyConfig(estimators=("disarm",), k=3), "K must be even for disarm, got 3"),
        (lambda: ToyConfig(steps=0), "--steps must be positive"),
        (lambda: ToyConfig(var_samples=1), "--var-samples must be at least 2"),
        (lambda: ToyConfig(seeds=()), "at least one --seed"),
        (lambda: ToyConfig(device="tpu"), "unknown device"),
        (lambda: ToyConfig(estimator_settings=EstimatorSettings(temperature=0.0)), "--temperature"),
        (lambda: ToyConfig(estimator_settings=EstimatorSettings(alpha=float("nan"))), "--alpha"),
        (lambda: VarianceConfig(theta="1.5"), "--theta must be in"),
        (lambda: VarianceConfig(theta="half"), "--theta must be a probability"),
        (lambda: VarianceConfig(ks=(2, 3), estimators=("disarm",)), "K must be even for disarm, got 3"),
    ],
)
def test_bad_settings_are_refused(make, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()


def test_theta():
    assert theta_probability("random") is None
    assert theta_probability("0.7") == 0.7
