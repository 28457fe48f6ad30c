"""The user's problem: what make_problem() may return, and what is refused before any draw."""

import pytest
import torch

from dcvbench.problems.user import RowFolded, UserProblem, row_tiled, user_problem
from dcvbench.runtime import ConfigError

LOGITS = torch.zeros(3, 4, dtype=torch.float64)  # [B, D]
WEIGHTS = torch.arange(12, dtype=torch.float64).reshape(3, 4)  # a different objective per row


def per_row(b):
    return (b * WEIGHTS).sum(-1)  # [K, B, D] → [K, B]


@pytest.mark.parametrize(
    "made",
    [(per_row, LOGITS), [per_row, LOGITS, None], {"objective": per_row, "logits": LOGITS},
     UserProblem(per_row, LOGITS)],
)  # fmt: skip
def test_tuples_dicts_and_problems_are_accepted(made):
    problem = user_problem(made)
    assert problem.shape.latent == 4 and problem.shape.latent_type == "binary"


def test_three_dimensional_logits_are_categorical():
    problem = user_problem((lambda b: b.sum((-2, -1)), torch.zeros(2, 3, 5, dtype=torch.float64)))
    assert problem.shape.latent_type == "categorical" and problem.shape.classes == 5


def test_folded_rows_evaluate_each_tiled_copy_with_its_own_row():
    b = torch.randint(0, 2, (2, 5 * 3, 4), generator=torch.Generator().manual_seed(0)).double()  # [K, 5·B, D]
    folded = RowFolded(per_row, event_dims=1).tile(5)
    expected = (b.reshape(2, 5, 3, 4) * WEIGHTS).sum(-1).reshape(2, 15)
    assert torch.equal(folded(b), expected)


class HookedPerRow:
    """An objective with a hook (``expectation``) whose values depend on the row, and no ``tile``."""

    def __call__(self, b):
        return per_row(b)

    def expectation(self, probs):
        return (probs * WEIGHTS).sum(-1)


def test_a_row_dependent_objective_with_hooks_must_tile_itself():
    with pytest.raises(ConfigError, match="depend on the row and it has expectation"):
        row_tiled(user_problem((HookedPerRow(), LOGITS)))


@pytest.mark.parametrize(
    ("made", "message"),
    [
        (3, "expected (objective, logits[, exact_gradient]) or a UserProblem, got int"),
        ({"objective": per_row}, "a dict needs the keys objective and logits"),
        ((3, LOGITS), "the objective is a int, not a function"),
        ((per_row, [[0.0]]), "the logits must be a floating-point torch tensor, got a list"),
        ((per_row, torch.zeros(3, 4, dtype=torch.long)), "got a torch.int64 tensor"),
        ((per_row, torch.zeros(4)), "logits must be [B, D] (bits) or [B, N, C] (categorical), got [4]"),
        ((per_row, torch.zeros(2, 3, 1)), "need C ≥ 2 classes, got 1"),
        ((per_row, torch.full((3, 4), float("nan"), dtype=torch.float64)), "not finite"),
        ((per_row, LOGITS, torch.zeros(3, 5, dtype=torch.float64)), "exact gradient must be shaped like"),
        ((per_row, LOGITS, torch.zeros(3, 4, dtype=torch.float32)), "exact gradient must be shaped like"),
        ((lambda b: b.sum(-1)[0], LOGITS), "must map samples [2, 3, 4] float64 on cpu to values [2, 3]"),
        ((lambda b: b.sum(-1).float(), LOGITS), "got [2, 3] float32 on cpu"),
        ((lambda b: b.sum(-1).tolist(), LOGITS), "must return a tensor [K, B], got a list"),
        ((lambda b: b.sum(-1) / 0, LOGITS), "returned values that are not finite"),
        ((lambda b: b @ torch.ones(5, dtype=b.dtype), LOGITS), "the objective raised RuntimeError"),
    ],
)
def test_bad_problems_are_one_line(made, message):
    with pytest.raises(ConfigError) as raised:
        user_problem(made, "make_problem()")
    assert str(raised.value).startswith("make_problem(): ")
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
