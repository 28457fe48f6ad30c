"""``dcvbench.compare``: the variance study on the user's own objective.

Bias threshold (family-wise, as tests/estimators/test_unbiased.py): under the null hypothesis (the
estimator is unbiased) each coordinate's z is approximately |N(0, 1)|; over ``N_TESTS`` coordinates
and estimators, two-sided, Bonferroni gives ``z* = Φ⁻¹(1 − FAMILY_ALPHA / (2·N_TESTS))``, so a correct
library fails with probability at most ``FAMILY_ALPHA`` (and the seed is fixed).
"""

import math

import pandas as pd
import pytest
import torch
from scipy.stats import norm

import dcvbench
from dcvbench.config import ToyProblem, VarianceConfig
from dcvbench.estimators import EstimatorError
from dcvbench.jobs.toy import make_toy
from dcvbench.jobs.variance import run_variance, study_logits
from dcvbench.results import read_manifest, read_table
from dcvbench.runtime import ConfigError

CPU = torch.device("cpu")
QUALITY = ("bias_max_z", "bias_mean_z", "bias_norm", "bias_norm_se", "mse", "mse_se", "cosine", "cosine_se")
# Columns that are the draws' (not the clock's): equal when the draws are.
DRAWN = ("estimator", "k", "evals", "variance", "variance_ratio", "cost_variance", "alpha", *QUALITY)


def toy_point(dim: int, theta: str = "0.7"):
    config = VarianceConfig(
        problem=ToyProblem(dim=dim), theta=theta, estimators=("rloo-dcv", "disarm"), ks=(2, 4),
        samples=600, seed=3, device="cpu",
    )  # fmt: skip
    toy = make_toy(config.problem, CPU, torch.float64)
    logits = study_logits(config, CPU, torch.float64)
    return config, toy, logits


def test_compare_on_the_toy_gives_the_variance_studys_numbers(tmp_path):
    config, toy, logits = toy_point(dim=20)
    study = run_variance(VarianceConfig(**{**config.__dict__, "out": str(tmp_path / "cli")}))
    table = dcvbench.compare(
        toy.objective, logits, estimators=("rloo-dcv", "disarm"), k=(2, 4), draws=600, seed=3,
        exact_gradient=toy.exact_gradient(logits),
    )  # fmt: skip
    pd.testing.assert_frame_equal(
        table[list(DRAWN)].reset_index(drop=True), study.table[list(DRAWN)].reset_index(drop=True)
    )


def test_exact_columns_are_there_when_given_or_enumerable_and_absent_otherwise():
    _, toy, logits = toy_point(dim=20)  # 2^20 codes: more than compare enumerates
    absent = dcvbench.compare(toy.objective, logits, estimators="rloo", draws=200)
    assert not set(QUALITY) & set(absent.columns)
    given = dcvbench.compare(
        toy.objective, logits, estimators="rloo", draws=200, exact_gradient=toy.exact_gradient(logits)
    )
    assert given[list(QUALITY)].notna().all().all()

    _, small, small_logits = toy_point(dim=8)  # 256 codes: enumerated
    enumerated = dcvbench.compare(small.objective, small_logits, estimators=("rloo", "disarm"), draws=400)
    truth = dcvbench.compare(
        small.objective, small_logits, estimators=("rloo", "disarm"), draws=400,
        exact_gradient=small.exact_gradient(small_logits),
    )  # fmt: skip
    # Enumeration sums 256 codes where the toy has a closed form: the same truth up to rounding.
    for column in QUALITY:
        assert enumerated[column].to_numpy() == pytest.approx(truth[column].to_numpy(), rel=1e-9, abs=1e-12)


class Bandit:
    """A contextual bandit: ``B`` contexts, one action among ``C`` (one-hot ``[K, B, 1, C]``), and
    the cost ``f = −r[context, action]``. ``∇_η E_π[f] = −π ⊙ (r − ⟨π, r⟩)`` per context."""

    def __init__(self, contexts: int, actions: int):
        generator = torch.Generator().manual_seed(11)
        self.rewards = torch.randn(contexts, actions, generator=generator, dtype=torch.float64)  # [B, C]
        self.logits = torch.randn(contexts, 1, actions, generator=generator, dtype=torch.float64)

    def __call__(self, b: torch.Tensor) -> torch.Tensor:
        return -(b[..., 0, :] * self.rewards).sum(-1)  # [K, B, 1, C] → [K, B]

    def exact_gradient(self) -> torch.Tensor:
        probs = torch.softmax(self.logits[:, 0], -1)  # [B, C]
        mean = (probs * self.rewards).sum(-1, keepdim=True)  # [B, 1]
        return (-probs * (self.rewards - mean)).unsqueeze(1)  # [B, 1, C]


BANDIT_UNBIASED = ("rloo", "rloo-dcv", "reinforce")
FAMILY_ALPHA = 1e-3
Z_CRITICAL = float(norm.isf(FAMILY_ALPHA / (2 * len(BANDIT_UNBIASED) * 4 * 5)))


def test_an_unbiased_estimators_bias_is_consistent_with_zero_on_a_bandit():
    bandit = Bandit(contexts=4, actions=5)
    table = dcvbench.compare(
        bandit, bandit.logits, estimators=(*BANDIT_UNBIASED, "concrete"), k=4, draws=4000,
        exact_gradient=bandit.exact_gradient(),
    )  # fmt: skip
    rows = table.set_index("estimator")
    assert 3.5 < Z_CRITICAL < 5
    for name in BANDIT_UNBIASED:
        assert rows.loc[name, "bias_max_z"] < Z_CRITICAL, name
    # Power: the relaxation is biased (E softmax((η + G)/λ) ≠ softmax(η)), and the same draws show it.
    assert rows.loc["concrete", "bias_max_z"] > Z_CRITICAL  # the test rejects it
    assert not rows.loc["concrete", "unbiased"]


def test_enumeration_gives_the_bandits_closed_form_gradient():
    from dcvbench.latent import family_named
    from dcvbench.measure.exact import enumerated_gradient

    bandit = Bandit(contexts=4, actions=5)
    enumerated = enumerated_gradient(bandit, bandit.logits, family_named("categorical"))
    assert torch.allclose(enumerated, bandit.exact_gradient(), rtol=1e-12, atol=1e-15)


def test_out_writes_a_variance_run_that_records_the_objective(tmp_path):
    bandit = Bandit(contexts=4, actions=5)
    table = dcvbench.compare(bandit, bandit.logits, estimators="rloo", k=2, draws=100, out=str(tmp_path))
    (run,) = tmp_path.iterdir()
    manifest = read_manifest(run)
    assert manifest["status"] == "finished" and manifest["job"] == "variance"
    assert manifest["point"]["problem"] == "user" and manifest["point"]["objective"] == "Bandit"
    assert manifest["point"]["exact_gradient"] == "enumerated"  # 5 codes per context
    written = read_table(run / "variance.parquet")
    assert written["variance"].tolist() == table["variance"].tolist()
    assert set(table["run_id"]) == {run.name}


def test_budget_and_names_are_checked_as_the_cli_checks_them():
    bandit = Bandit(contexts=2, actions=3)
    with pytest.raises(ConfigError, match="unknown estimator 'rlooo'"):
        dcvbench.compare(bandit, bandit.logits, estimators="rlooo", draws=10)
    with pytest.raises(ConfigError, match="disarm has no categorical version"):
        dcvbench.compare(bandit, bandit.logits, estimators="disarm", draws=10)
    by_budget = dcvbench.compare(bandit, bandit.logits, estimators=("rloo", "muprop"), budget=6, draws=50)
    assert by_budget.set_index("estimator")["k"].to_dict() == {"rloo": 6, "muprop": 5}
    assert (by_budget["budget"] == 6).all()


class BanditWithExpectation(Bandit):
    """The bandit with its closed-form ``E_π[f] = −⟨π, r⟩`` per context, tiled as the study tiles rows."""

    def expectation(self, probs: torch.Tensor) -> torch.Tensor:
        return -(probs[:, 0] * self.rewards).sum(-1)  # [B, 1, C] → [B]

    def tile(self, times: int) -> "BanditWithExpectation":
        tiled = BanditWithExpectation.__new__(BanditWithExpectation)
        tiled.rewards, tiled.logits = self.rewards.repeat(times, 1), self.logits.repeat(times, 1, 1)
        return tiled


def test_an_estimator_needing_a_hook_the_objective_lacks_is_refused_before_any_directory(tmp_path):
    bandit = Bandit(contexts=2, actions=3)
    out = tmp_path / "out"
    with pytest.raises(EstimatorError, match="exact-baseline needs the objective's expectation"):
        dcvbench.compare(bandit, bandit.logits, estimators=("rloo", "exact-baseline"), draws=10, out=str(out))
    assert not out.exists()
    given = BanditWithExpectation(contexts=2, actions=3)
    table = dcvbench.compare(given, given.logits, estimators="exact-baseline", draws=50)
    assert table.set_index("estimator")["variance"].notna().all()


def test_the_users_problem_is_user_not_toy():
    # carms is categorical only: checked as the toy's (binary) problem it was refused.
    bandit = Bandit(contexts=2, actions=3)
    assert dcvbench.compare(bandit, bandit.logits, estimators="carms", draws=20)["variance"].notna().all()
    # vimco runs on a user objective that declares f = −log w; one that does not is refused by hook.
    logits = torch.zeros(3, 4, dtype=torch.float64)
    with pytest.raises(EstimatorError, match="vimco needs the objective's proposal_in_weight"):
        dcvbench.compare(NegativeLogWeight(proposal=None), logits, estimators="vimco", draws=10)
    table = dcvbench.compare(NegativeLogWeight(proposal=False), logits, estimators="vimco", draws=50)
    assert table.set_index("estimator")["variance"].notna().all()


class NegativeLogWeight:
    """``f = −log p(y | b)`` of a bit-flip likelihood, the same for every row; with ``proposal`` not
    ``None`` it declares ``proposal_in_weight`` (:class:`~dcvbench.objectives.HasImportanceWeight`)."""

    def __init__(self, proposal: bool | None):
        if proposal is not None:
            self.proposal_in_weight = proposal

    def __call__(self, b: torch.Tensor) -> torch.Tensor:
        return -torch.log(0.1 + 0.8 * b).sum(-1)  # [K, B, D] → [K, B]


def test_device_and_dtype_move_the_logits_and_the_objective_must_follow():
    bandit = Bandit(contexts=2, actions=3)
    with pytest.raises(ConfigError, match=r"compare\(\): the objective must map .* float32"):
        dcvbench.compare(bandit, bandit.logits, draws=10, dtype="float32")
    variance = dcvbench.compare(bandit, bandit.logits, estimators="rloo", draws=50)["variance"]
    assert math.isfinite(float(variance.iloc[0]))
