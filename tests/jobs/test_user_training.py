"""Training the user's own model (dcvbench.jobs.user_training, ``dcvbench train --objective``)."""

import functools
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from dcvbench.cli import main
from dcvbench.jobs.user_training import USER_METRICS, train
from dcvbench.results import MANIFEST, TIMING_COLUMNS, find_runs, read_trace
from dcvbench.runtime import ConfigError
from dcvbench.user_code import load_callable

EXAMPLES = Path(__file__).parents[2] / "docs" / "examples"
TINY = {"k": 2, "steps": 6, "log_every": 2, "eval_every": 3}


def bandit_model():
    return load_callable(f"{EXAMPLES / 'bandit.py'}:make_model", "test")


def trace_of(summary):
    return read_trace(summary.path).drop(columns=TIMING_COLUMNS).reset_index(drop=True)


def test_same_seed_same_trace_other_seed_another(tmp_path):
    make = functools.partial(bandit_model(), batch_size=8, actions=4)
    runs = [train(make, estimators=["rloo-dcv"], seeds=[seed], out=tmp_path, **TINY)[0] for seed in (3, 3, 4)]
    first, again, other = map(trace_of, runs)
    assert first.equals(again)
    assert not first["train_objective"].equals(other["train_objective"])


def test_trace_columns_manifest_and_eval_rows(tmp_path):
    make = functools.partial(bandit_model(), batch_size=8, actions=4)
    (summary,) = train(make, estimators=["rloo-dcv"], seeds=[0], out=tmp_path, name="bandit", **TINY)
    trace = read_trace(summary.path)
    assert set(USER_METRICS) | {"alpha", "eval_expected_reward", "eval_regret"} <= set(trace.columns)
    assert list(trace["step"]) == [0, 2, 3, 4, 6]  # log_every 2, eval_every 3, the last step
    evaluated = trace.dropna(subset=["eval_regret"])["step"].tolist()
    assert evaluated == [0, 3, 6]
    manifest = json.loads((summary.path / MANIFEST).read_text())
    assert (manifest["job"], manifest["problem"], manifest["latent"]) == ("train", "bandit", "categorical")
    assert manifest["latent_shape"] == [1, 4] and manifest["status"] == "finished"


class SharedTrunk(nn.Module):
    """One trunk ``w = trunk(v)`` behind both the logits ``η = w`` and ``f(b) = ‖b − w‖²``: the step
    must give ``v`` the estimator's ``g`` plus the pathwise ``∇_w f``, through the trunk, whose sum
    has the expectation ``(p(1 − p)((1 − w)² − w²) − 2(p − w)) · dw/dv`` per bit, ``p = σ(w)``.
    ``"identity"``: ``w = v``; ``"tanh"``: ``w = tanh(v)``, a trunk whose graph keeps tensors that
    both backward passes need."""

    def __init__(self, trunk: str):
        super().__init__()
        self.v = nn.Parameter(torch.tensor([[1.5, -1.0]]))  # each term ≥ 0.29 per bit
        self.trunk = trunk
        self.w = None

    def logits(self, batch):
        self.w = self.v if self.trunk == "identity" else torch.tanh(self.v)  # [1, 2], shared with f
        return self.w.expand(batch.shape[0], -1)  # [B, 2]

    def objective(self, batch):
        w = self.w
        return lambda b: (b - w).square().sum(-1)  # [K, B]

    def batches(self, generator):
        while True:
            yield torch.zeros(512, 1)

    def exact_gradient(self) -> torch.Tensor:
        """``∇_v E_{q_w}[f_w]`` with ``w = trunk(v)``, ``[1, 2]``."""
        w = self.v.detach() if self.trunk == "identity" else torch.tanh(self.v.detach())
        p = torch.sigmoid(w)
        # E[(b − w)²] = p(1 − w)² + (1 − p) w², per bit: its total derivative in w, then the chain rule.
        dw_dv = torch.ones_like(w) if self.trunk == "identity" else 1 - w**2
        return (p * (1 - p) * ((1 - w) ** 2 - w**2) - 2 * (p - w)) * dw_dv


STEPS = 40  # independent steps of one shared-trunk test; each averages 512 rows


@pytest.mark.parametrize("trunk", ["identity", "tanh"])
def test_a_parameter_behind_logits_and_f_gets_both_gradients(trunk):
    """The mean of independent steps' gradients of the trunk matches ``∇_v E_q[f]`` (both terms)
    within its standard error, estimated from the steps' spread: |t| below the two-sided 1e-3
    quantile of Student's t with STEPS − 1 degrees of freedom, Bonferroni over the two coordinates."""
    from scipy import stats

    from dcvbench.estimators import build_estimator
    from dcvbench.jobs.user_training import _step, _Training
    from dcvbench.measure.vae_variance import EMAVariance
    from dcvbench.objectives import ProblemShape

    model = SharedTrunk(trunk)
    estimator = build_estimator("rloo", {}, ProblemShape(2))
    grads = []
    for seed in range(STEPS):
        training = _Training(
            model,
            estimator,
            torch.optim.SGD(model.parameters(), lr=0.0),
            iter(model.batches(None)),
            torch.Generator().manual_seed(seed),
            EMAVariance(),
        )
        _step(training, next(training.batches), k=4)  # it raised on a tanh trunk before the fix
        grads.append(model.v.grad.clone())
    grads = torch.stack(grads)  # [STEPS, 1, 2]
    t = (grads.mean(0) - model.exact_gradient()) / (grads.std(0) / STEPS**0.5)
    assert t.abs().max() < stats.t.ppf(1 - 1e-3 / (2 * t.numel()), STEPS - 1)


def test_bad_models_are_config_errors_before_anything_is_written(tmp_path):
    make = bandit_model()
    out = tmp_path / "runs"

    class NoBatches(nn.Module):
        def logits(self, batch):
            return batch

        def objective(self, batch):
            return lambda b: b.sum(-1)

    wrong = [
        (lambda: "a string", "is not an nn.Module"),
        (NoBatches, "has no batches"),
        (functools.partial(make, batch_size=0), "logits must be [B, D]"),
    ]
    for make_bad, message in wrong:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
            train(make_bad, estimators=["rloo"], out=out, **TINY)
    with pytest.raises(ConfigError, match="unknown estimator 'nope'"):
        train(make, estimators=["nope"], out=out, **TINY)
    assert not out.exists()


WRONG_SHAPE_MODEL = """
import torch
from torch import nn

class Flat(nn.Module):
    def __init__(self):
        super().__init__()
        self.eta = nn.Parameter(torch.zeros(3))

    def logits(self, x):
        return self.eta.expand(x.shape[0], 3)

    def objective(self, x):
        return lambda b: b.sum(-1).sum(0)  # [B]: the K axis summed away

    def batches(self, generator):
        while True:
            yield torch.zeros(5, 1)

def make_model():
    return Flat()
"""


def test_cli_trains_the_example_and_refuses_bad_specs_in_one_line(tmp_path, capsys):
    out = tmp_path / "runs"
    spec = f"{EXAMPLES / 'bandit.py'}:make_model"
    args = ["--steps", "4", "--log-every", "2", "--eval-every", "2", "--out", str(out), "--quiet"]
    assert main(["train", "--objective", spec, "--estimator", "rloo", *args]) == 0
    (run,) = find_runs(out)
    assert run.name.startswith("train-bandit-rloo-k2-seed0")
    capsys.readouterr()
    shapes = tmp_path / "shapes.py"
    shapes.write_text(WRONG_SHAPE_MODEL)
    bad = [
        (f"{tmp_path / 'absent.py'}:make_model", "no file"),
        (f"{EXAMPLES / 'bandit.py'}:make_nothing", "defines no 'make_nothing'"),
        (f"{shapes}:make_model", "to values [2, 5]"),
    ]
    for spec, message in bad:
        assert main(["train", "--objective", spec, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()
