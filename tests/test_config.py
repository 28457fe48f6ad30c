"""Settings validation: bad values are refused at construction, naming the value."""

import itertools
import json
import math
import re
from dataclasses import asdict, replace

import pytest

from dcvbench.config import (
    PredictConfig,
    ToyConfig,
    ToyProblem,
    VaeConfig,
    VarianceConfig,
    theta_probability,
    toy_config_from_dict,
    vae_config_from_dict,
    variance_config_from_dict,
)
from dcvbench.estimators import default_settings
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
        (lambda: ToyConfig(threads=0), "--threads must be positive, got 0"),
        (lambda: VarianceConfig(threads=-1), "--threads must be positive, got -1"),
        (lambda: VaeConfig(threads=0), "--threads must be positive, got 0"),
        (
            lambda: ToyConfig(estimator_settings={"temperature": 0.0}),
            "--temperature must be positive, got 0.0",
        ),
        (lambda: ToyConfig(estimator_settings={"alpha": float("nan")}), "--alpha must be finite, got nan"),
        (
            lambda: ToyConfig(estimator_settings={"alpha_learning": "newton"}),
            "--alpha-learning must be sgd or",
        ),
        (
            lambda: VaeConfig(estimator_settings={"baseline_decay": 1.0}),
            "--baseline-decay must be in",
        ),
        (lambda: ToyConfig(estimator_settings={"control_lr": 0.0}), "--control-lr must be positive"),
        (lambda: ToyConfig(estimator_settings={"alpha_rate": 0.1}), "unknown estimator option 'alpha_rate'"),
        (lambda: VarianceConfig(theta="1.5"), "--theta must be in"),
        (lambda: VarianceConfig(theta="half"), "--theta must be a probability"),
        (lambda: VarianceConfig(ks=(2, 3), estimators=("disarm",)), "K must be even for disarm, got 3"),
        (lambda: VarianceConfig(ks=(2,), budgets=(4,)), "give --k or --budget, not both"),
        (lambda: VarianceConfig(ks=()), "give at least one --k or --budget"),
        (lambda: VarianceConfig(budgets=(4, 0)), "--budget must be a positive whole number of evaluations"),
        (lambda: VarianceConfig(budgets=(2.5,)), "--budget must be a positive whole number of evaluations"),
        (
            lambda: VarianceConfig(budgets=(8, 2), estimators=("rloo", "relax")),
            "--budget 2 is below relax's cheapest estimate: 3 evaluations of f at K=1 (it costs 3K)",
        ),
        (
            lambda: VarianceConfig(problem=ToyProblem(dim=10), estimators=("indecater",), budgets=(10,)),
            "--budget 10 is below indecater's cheapest estimate: 11 evaluations of f at K=1",
        ),
        (
            lambda: VaeConfig(k=2, budget=4),
            "--budget 4 sets each estimator's K: give --k or --budget, not both",
        ),
        (
            lambda: VaeConfig(budget=-1),
            "--budget must be a positive whole number of evaluations of f, got -1",
        ),
        (
            lambda: VaeConfig(
                latent="categorical", latent_vars=4, classes=3, estimators=("indecater",), budget=8
            ),
            "--budget 8 is below indecater's cheapest estimate: 9 evaluations of f at K=1",
        ),
        (lambda: VaeConfig(prior_temperature=0.0), "--prior-temperature must be positive, got 0.0"),
        (lambda: VaeConfig(kl="exact"), "unknown --kl 'exact'; choose from: relaxed, analytic"),
        (lambda: VaeConfig(anneal="linear"), "unknown --anneal 'linear'; choose from: none, exp"),
        (lambda: VaeConfig(anneal_rate=-1e-4), "--anneal-rate must be ≥ 0, got -0.0001"),
        (lambda: VaeConfig(anneal_rate=math.inf), "--anneal-rate must be ≥ 0, got inf"),
        (lambda: VaeConfig(anneal_floor=0.0), "--anneal-floor must be positive, got 0.0"),
        (
            lambda: VaeConfig(
                anneal="exp", estimators=("concrete",), estimator_settings={"temperature": 0.4}
            ),
            "--anneal-floor 0.5 is above concrete's temperature 0.4: annealing only lowers a temperature",
        ),
        (
            lambda: VaeConfig(
                estimators=("concrete",), anneal="exp", prior_temperature=0.3, anneal_floor=0.4
            ),
            "--anneal-floor 0.4 is above --prior-temperature 0.3",
        ),
    ],
)
def test_bad_settings_are_refused(make, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()


@pytest.mark.parametrize(
    "make",
    [
        lambda seed: ToyConfig(seeds=(0, seed)),
        lambda seed: VarianceConfig(seed=seed),
        lambda seed: VaeConfig(seeds=(seed,)),
        lambda seed: PredictConfig(seeds=(seed,)),
    ],
    ids=["toy", "variance", "vae", "predict"],
)
def test_a_seed_is_a_whole_number_in_0_to_2_63(make):
    """The trace stores seeds as int64 and numpy's SeedSequence refuses negative ones: both ends, and
    anything not a whole number (a hand-edited manifest's string), are one-line errors here."""
    for seed in (0, 2**63 - 1):
        make(seed)
    for seed in (-1, 2**63, "1", 1.0):
        with pytest.raises(
            ConfigError, match=rf"--seed must be a whole number from 0 to 2\*\*63 - 1, got {seed}$"
        ):
            make(seed)


def test_k_or_a_budget_round_trips_and_old_manifests_have_no_budget():
    # Neither given: K = 2; a budget leaves K to each estimator (its run's manifest records it).
    assert (VarianceConfig().ks, VarianceConfig().budgets) == ((2,), ())
    assert (VaeConfig().k, VaeConfig().budget) == (2, None)
    at_budget = VarianceConfig(budgets=(8, 16))
    assert at_budget.ks == ()
    assert variance_config_from_dict(asdict(at_budget)) == at_budget
    vae = VaeConfig(estimators=("rloo", "disarm"), budget=7)
    assert vae.k is None and vae_config_from_dict(asdict(vae)) == vae
    old = asdict(VarianceConfig(ks=(2, 4)))
    del old["budgets"]  # written before budgets
    assert variance_config_from_dict(old) == VarianceConfig(ks=(2, 4))
    old_vae = asdict(VaeConfig())
    del old_vae["budget"]
    assert vae_config_from_dict(old_vae) == VaeConfig()


def test_theta():
    assert theta_probability("random") is None
    assert theta_probability("0.7") == 0.7


def test_vae_relaxation_settings_round_trip_and_old_manifests_load():
    config = VaeConfig(
        estimators=("concrete", "st-concrete"),
        estimator_settings={"temperature": 0.9},
        prior_temperature=0.6,
        kl="analytic",
        anneal="exp",
        anneal_rate=3e-4,
        anneal_floor=0.2,
    )
    assert vae_config_from_dict(asdict(config)) == config
    old = asdict(VaeConfig())
    for name in ("prior_temperature", "kl", "anneal", "anneal_rate", "anneal_floor"):
        del old[name]  # a manifest written before the relaxation had settings
    assert vae_config_from_dict(old) == VaeConfig()
    assert (VaeConfig().prior_temperature, VaeConfig().kl, VaeConfig().anneal) == (0.5, "relaxed", "none")


def test_temperatures_anneal_exponentially_to_the_floor():
    settings = {"temperature": 1.0}
    fixed = VaeConfig(estimators=("concrete",), estimator_settings=settings)
    assert fixed.temperatures(10_000, "concrete") == (1.0, 0.5)  # no annealing
    config = replace(fixed, anneal="exp", anneal_rate=0.01, anneal_floor=0.2)
    assert config.temperatures(0, "concrete") == (1.0, 0.5)
    posterior, prior = config.temperatures(50, "concrete")
    assert math.isclose(posterior, math.exp(-0.5)) and math.isclose(prior, 0.5 * math.exp(-0.5))
    assert config.temperatures(10_000, "concrete") == (0.2, 0.2)  # both held at the floor
    steps = [config.temperatures(step, "concrete")[0] for step in range(0, 300, 10)]
    assert all(later <= earlier for earlier, later in itertools.pairwise(steps))
    # An estimator without a temperature has no posterior one; the prior's anneals all the same.
    assert config.temperatures(10_000, "rloo") == (None, 0.2)


def test_each_estimator_starts_at_its_own_temperature_unless_one_is_given():
    mixed = VaeConfig(estimators=("concrete", "st-concrete", "rloo"))
    assert mixed.estimator_settings["temperature"] is None  # the manifest says: not given
    assert mixed.start_temperatures() == {"concrete's temperature": 2 / 3, "st-concrete's temperature": 2 / 3}
    given = replace(mixed, estimator_settings={"temperature": 0.9})
    assert given.temperatures(0, "st-concrete") == (0.9, 0.5)


def test_estimator_settings_hold_every_option_with_the_job_s_defaults():
    # The published toy tuned α with RMSprop at 5e-4, the VAE with Adam at 1e-3; a variance study
    # learns nothing, and has only the options that act at a fixed point.
    assert ToyConfig().estimator_settings == default_settings("toy")
    assert ToyConfig().estimator_settings["alpha_optimizer"] == "rmsprop"
    assert VarianceConfig().estimator_settings == default_settings("variance")
    assert VaeConfig().estimator_settings == default_settings("vae")
    assert VaeConfig().estimator_settings["alpha_lr"] == 1e-3
    # What is given replaces the job's default; the rest stays, so the manifest records every value.
    given = ToyConfig(estimator_settings={"alpha": -0.5, "temperature": 0.9}).estimator_settings
    assert given == {**default_settings("toy"), "alpha": -0.5, "temperature": 0.9}


def test_manifests_round_trip_and_a_missing_option_takes_the_job_default():
    config = ToyConfig(estimator_settings={"alpha_learning": "optimal", "baseline_decay": 0.5})
    saved = asdict(config)
    assert saved["estimator_settings"] == config.estimator_settings  # saved verbatim
    assert toy_config_from_dict(saved) == config
    del saved["estimator_settings"]["control_lr"]  # an option added after the run was written
    assert (
        toy_config_from_dict(saved).estimator_settings["control_lr"] == default_settings("toy")["control_lr"]
    )
    vae = asdict(VaeConfig(estimator_settings={"alpha_optimizer": "sgd"}))
    assert vae_config_from_dict(vae).estimator_settings["alpha_optimizer"] == "sgd"


def test_a_variance_study_has_no_learning_options_and_reads_old_manifests():
    # A variance study trains nothing: α's learning and the controls' rate are not its options.
    assert set(default_settings("variance")) == {
        "alpha",
        "temperature",
        "baseline_decay",
        "rao_samples",
        "gst_gap",
    }
    with pytest.raises(ConfigError, match="unknown estimator option 'alpha_lr'"):
        VarianceConfig(estimator_settings={"alpha_lr": 1e-3})
    # Written before options knew their jobs: every option, as the flat settings record held them.
    old = asdict(VarianceConfig(estimator_settings={"alpha": -0.5}))
    old["estimator_settings"].update(
        alpha_learning="sgd", alpha_optimizer="adam", alpha_lr=1e-3, control_lr=1e-3
    )
    rebuilt = variance_config_from_dict(old)
    assert rebuilt == VarianceConfig(estimator_settings={"alpha": -0.5})
    old["estimator_settings"]["alpah"] = 1.0  # a name no estimator declares is still refused
    with pytest.raises(ConfigError, match="alpah"):
        variance_config_from_dict(old)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"alpha": "x"}, "--alpha must be a float, got 'x'"),
        ({"alpha_lr": True}, "--alpha-lr must be a float, got True"),
        ({"alpha_optimizer": 3}, "--alpha-optimizer must be a str, got 3"),
    ],
)
def test_a_value_of_the_wrong_type_is_one_line(settings, message):
    # What a hand-edited manifest may hold: refused with its option's name, not a traceback.
    with pytest.raises(ConfigError, match=message):
        ToyConfig(estimator_settings=settings)


def test_a_temperature_below_an_estimators_minimum_is_refused_before_any_run():
    # ReinMax needs λ ≥ 1 (its authors' requirement); not given, it starts at its own default, 1.
    categorical = ToyProblem(latent="categorical", dim=4)
    assert (
        ToyConfig(problem=categorical, estimators=("reinmax", "st-concrete")).estimator_settings[
            "temperature"
        ]
        is None
    )
    with pytest.raises(ConfigError, match=r"--temperature 0\.5: reinmax needs a temperature ≥ 1"):
        ToyConfig(
            problem=categorical,
            estimators=("st-concrete", "reinmax"),
            estimator_settings={"temperature": 0.5},
        )
    with pytest.raises(ConfigError, match=r"--temperature 0\.5: reinmax needs a temperature ≥ 1"):
        VarianceConfig(problem=categorical, estimators=("reinmax",), estimator_settings={"temperature": 0.5})
    # An annealed run comes down to the floor: the floor must suit it too.
    with pytest.raises(ConfigError, match=r"--anneal-floor 0\.5: reinmax needs a temperature ≥ 1"):
        VaeConfig(
            latent="categorical",
            estimators=("reinmax",),
            anneal="exp",
            estimator_settings={"temperature": 2.0},
        )
    annealed = VaeConfig(latent="categorical", estimators=("reinmax",), anneal="exp", anneal_floor=1.0)
    assert annealed.temperatures(0, "reinmax")[0] == 1.0


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(k="two"), "config.k must be a whole number, got 'two'"),
        (lambda c: c.update(steps=4.0), "config.steps must be a whole number, got 4.0"),
        (lambda c: c.update(maximize="yes"), "config.maximize must be true or false, got 'yes'"),
        (lambda c: c.update(seeds=["a"]), "config.seeds must be a list of whole numbers, got ('a',)"),
        (lambda c: c["problem"].update(dim="x"), "config.problem.dim must be a whole number, got 'x'"),
        (lambda c: c.update(problem=[1]), "config.problem must be a mapping of option names to values"),
        (lambda c: c.update(estimator_settings=[1]), "config.estimator_settings must be a mapping, got [1]"),
        (lambda c: c.update(bogus=1), "config.bogus is no setting of ToyConfig"),
    ],
)
def test_a_hand_edited_config_names_the_field(edit, message):
    values = asdict(ToyConfig())
    edit(values)
    with pytest.raises(ConfigError, match=re.escape(message)):
        toy_config_from_dict(values)


def test_a_manifest_config_of_the_right_types_is_rebuilt_as_saved():
    config = VaeConfig(latent_vars=8, seeds=(3, 4), estimator_settings={"alpha": 0.5})
    assert vae_config_from_dict(json.loads(json.dumps(asdict(config)))) == config


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ToyConfig(steps=2**63), "--steps must be at most 2**63 - 1"),
        (lambda: ToyConfig(k=10**30), "--k must be at most 2**63 - 1"),
        (lambda: ToyProblem(target=1e7), "--target must be in [-1e+06, 1e+06], got 10000000.0"),
        (lambda: ToyProblem(target=math.nan), "--target must be in [-1e+06, 1e+06], got nan"),
        (lambda: VarianceConfig(budgets=(2**63,)), "--budget must be at most 2**63 - 1"),
        (lambda: VaeConfig(prior_temperature=1e-40), "--prior-temperature must be at least 2**-126"),
        (
            lambda: ToyConfig(estimators=("concrete",), estimator_settings={"temperature": 1e-300}),
            "--temperature must be at least 2**-126",
        ),
    ],
)
def test_values_whose_arithmetic_overflows_are_refused_with_the_range(make, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        make()
