"""VIMCO: its leave-one-out bounds, its estimate replayed by hand, the decoder's surrogate, the VAE job.

Unbiasedness for the K-sample bound, against an exact enumeration, is in
``tests/problems/test_enumerable.py``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch
from torch import Tensor

from dcvbench.cli import main
from dcvbench.config import VaeConfig
from dcvbench.estimators import EstimatorError, estimator_info, get_estimator
from dcvbench.estimators.vimco import leave_one_out_bounds
from dcvbench.jobs.vae import run_vae
from dcvbench.latent import BINARY
from dcvbench.problems.vae import VAE, NegativeELBO
from dcvbench.results import read_trace
from dcvbench.training import train_step

F64 = torch.float64


def small_vae(rows: int = 4, latent: int = 5, pixels: int = 12) -> tuple[VAE, Tensor]:
    model = VAE(latent=latent, pixels=pixels, arch="nonlinear", hidden=8, dtype=F64,
                      generator=torch.Generator().manual_seed(3))  # fmt: skip
    x = (torch.rand(rows, pixels, generator=torch.Generator().manual_seed(4), dtype=F64) < 0.4).to(F64)
    return model, x


def loo_bounds_by_definition(log_w: Tensor) -> Tensor:
    """``L_{−k} = log (1/K)(Σ_{j≠k} w_j + ŵ_{−k})`` one k and one row at a time, ``[K, B]``."""
    k, rows = log_w.shape
    out = torch.empty_like(log_w)
    for row in range(rows):
        for i in range(k):
            others = torch.cat([log_w[:i, row], log_w[i + 1 :, row]])
            geometric = others.mean()
            out[i, row] = torch.logsumexp(torch.cat([others, geometric.reshape(1)]), 0) - math.log(k)
    return out


@pytest.mark.parametrize("k", [2, 3, 5, 8])
def test_leave_one_out_bounds_match_their_definition(k: int):
    log_w = 3.0 * torch.randn(k, 6, generator=torch.Generator().manual_seed(k), dtype=F64)
    torch.testing.assert_close(leave_one_out_bounds(log_w), loo_bounds_by_definition(log_w))


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_leave_one_out_bounds_stay_exact_when_one_weight_dominates(dtype: torch.dtype):
    # VAE log weights are hundreds of nats apart; Σ w − w_k would lose the small weights entirely.
    log_w = torch.tensor([[-5000.0], [0.0], [-3.0]], dtype=dtype)
    third = math.log(3)
    expected = torch.tensor(
        [
            [math.log(1 + math.exp(-3) + math.exp(-1.5)) - third],  # others {0, −3}, ŵ = e^−1.5
            [-3.0 - third],  # others {−5000, −3}, ŵ = e^−2501.5: only w = e^−3 counts
            [-third],  # others {−5000, 0}, ŵ = e^−2500: only w = 1 counts
        ],
        dtype=dtype,
    )
    got = leave_one_out_bounds(log_w)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("k", [2, 3, 6])
def test_estimate_replayed_by_hand(k: int):
    """On the same samples, ``g`` is ``∇_η`` of the hand-written VIMCO surrogate
    ``−[Σ_k (L_K − L_{−k}) log q(b_k) + L_K]`` (signals held fixed; η inside ``log q`` of the weights),
    the decoder surrogate's gradient is ``−∇_θ mean_rows L_K``, and the reported bound is L_K."""
    model, x = small_vae()
    logits = model.encode(x).detach()  # [B, D]
    estimator = get_estimator("vimco")
    f = NegativeELBO(model, x, logits)
    estimate = estimator(logits, f, k, torch.Generator().manual_seed(9))

    noise = estimator.sample(logits, k, torch.Generator().manual_seed(9))  # the same uniforms
    b = (noise < torch.sigmoid(logits)).to(F64)  # [K, B, D]
    eta = logits.clone().requires_grad_(True)
    log_q = BINARY.log_prob(b, eta)  # [K, B]
    log_w = model.log_joint(x, b) - log_q  # [K, B], η attached
    bound = torch.logsumexp(log_w, 0) - math.log(k)  # L_K: [B]
    signal = (bound - loo_bounds_by_definition(log_w)).detach()  # [K, B]
    surrogate = -((signal * log_q).sum(0) + bound).sum()
    params = model.decoder_parameters()
    (grad_eta,) = torch.autograd.grad(surrogate, eta, retain_graph=True)
    expected_decoder = torch.autograd.grad(-bound.mean(), params)

    torch.testing.assert_close(estimate.grad, grad_eta, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(estimate.values.detach(), -log_w.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(estimate.stats["train_bound"], bound.mean().detach())
    for got, want in zip(torch.autograd.grad(estimate.surrogate, params), expected_decoder, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert not estimate.grad.requires_grad and not estimate.stats["train_bound"].requires_grad


def test_train_step_trains_the_decoder_on_the_k_sample_bound():
    model, x = small_vae()
    before = copy.deepcopy(model)
    encoder_optimizer = torch.optim.Adam(model.encoder_parameters(), lr=1e-3)
    decoder_optimizer = torch.optim.Adam(model.decoder_parameters(), lr=1e-3)
    out = train_step(model, get_estimator("vimco"), x, 3, torch.Generator().manual_seed(5),
                     encoder_optimizer, decoder_optimizer)  # fmt: skip

    logits = before.encode(x)
    noise = get_estimator("vimco").sample(logits, 3, torch.Generator().manual_seed(5))
    b = (noise < torch.sigmoid(logits.detach())).to(F64)
    log_w = -NegativeELBO(before, x, logits)(b)  # [K, B]
    bound = torch.logsumexp(log_w, 0) - math.log(3)
    expected = torch.autograd.grad(-bound.mean(), before.decoder_parameters())
    for param, want in zip(model.decoder_parameters(), expected, strict=True):
        torch.testing.assert_close(param.grad, want, rtol=1e-10, atol=1e-12)
    # The step reports the single-sample ELBO of the same samples, below the K-sample bound.
    torch.testing.assert_close(out.train_elbo, log_w.detach().mean())
    assert float(out.estimate.stats["train_bound"]) > float(out.train_elbo)


def test_vimco_needs_two_samples_and_an_importance_weight():
    info = estimator_info("vimco")
    assert info.min_k == 2 and info.problems == ("vae", "predict", "user") and info.bounds == ("iwae",)
    model, x = small_vae()
    logits = model.encode(x).detach()
    with pytest.raises(EstimatorError, match="K must be ≥ 2 for vimco, got 1"):
        get_estimator("vimco")(logits, NegativeELBO(model, x, logits), 1, torch.Generator().manual_seed(0))


def test_toy_run_with_vimco_is_a_usage_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["toy", "--estimator", "vimco", "--steps", "2", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    expected = "dcvbench: error: vimco runs on the vae, predict and user problems only, not toy"
    assert err.strip().splitlines() == [expected]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_vae_run_records_the_k_sample_bound_above_the_elbo(tmp_path):
    config = VaeConfig.for_protocol(
        "dcv", estimators=("vimco",), k=2, latent_vars=8, batch_size=20, steps=40, log_every=5,
        var_every=20, eval_every=20, checkpoint_every=20, var_samples=8, eval_samples=5,
        device="cpu", out=str(tmp_path),
    )  # fmt: skip
    (summary,) = run_vae(config)
    assert summary.status == "finished"
    trace = read_trace(summary.path)
    evaluated = trace["test_bound"].dropna()
    assert len(evaluated) == 3 and evaluated.map(math.isfinite).all() and (evaluated < 0).all()
    trained = trace.dropna(subset=["train_elbo"])
    assert len(trained) == 8 and trained["train_bound"].notna().all()
    assert trace.loc[trace["step"] == 0, "train_bound"].isna().all()  # nothing trained yet
    # Jensen on the very samples of each step: log mean_k w_k ≥ mean_k log w_k, so every row's
    # averaged bound is at least its averaged ELBO — not only on average.
    gap = trained["train_bound"] - trained["train_elbo"]
    assert (gap >= 0).all() and gap.mean() > 0


def test_other_runs_have_no_bound_column(tmp_path):
    config = replace(
        VaeConfig.for_protocol("dcv", latent_vars=8, batch_size=20, steps=10, log_every=5, eval_every=10,
                               var_every=10, var_samples=4, eval_samples=2, device="cpu"),
        estimators=("rloo",), out=str(tmp_path),
    )  # fmt: skip
    (summary,) = run_vae(config)
    trace = read_trace(summary.path)
    assert "train_bound" not in trace  # a column of the estimators that report it
    assert trace["train_elbo"].iloc[1:].notna().all()
