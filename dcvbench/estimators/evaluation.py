"""Evaluating the objective at an estimator's samples, with ``∇_b f`` when the estimator needs it."""

from __future__ import annotations

import torch
from torch import Tensor

from dcvbench.objectives import Evaluation, HasInputGrad, Objective


def evaluate(f: Objective, b: Tensor, with_input_grad: bool) -> Evaluation:
    """``f`` at ``b [K, B, *event]``; with ``with_input_grad``, also ``∇_b f`` ``[K, B, *event]``.

    An objective that :class:`~dcvbench.objectives.HasInputGrad` computes both in one pass it
    controls (the VAE shares it with its decoder's gradients and returns those as ``param_grads``);
    for any other the input gradient comes from autograd, keeping ``f``'s graph for the caller.
    """
    if not with_input_grad:
        return Evaluation(f(b))
    if isinstance(f, HasInputGrad):
        return f.value_and_input_grad(b)
    with torch.enable_grad():
        b = b.detach().requires_grad_(True)
        values = f(b)  # [K, B]
        # Keep the graph: a model may still train its own parameters on these values.
        (grad,) = torch.autograd.grad(values.sum(), b, retain_graph=True)
    return Evaluation(values, input_grad=grad)
