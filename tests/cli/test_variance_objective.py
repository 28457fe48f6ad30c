"""``dcvbench variance --objective FILE.py:NAME``: the user's problem from the command line."""

import hashlib
import textwrap

import pytest

from dcvbench.cli import main
from dcvbench.results import read_manifest, read_table

BANDIT = textwrap.dedent(
    """
    import torch

    REWARDS = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(4, 3)  # [B, C]

    def cost(b):
        return -(b[..., 0, :] * REWARDS).sum(-1)  # [K, B, 1, C] → [K, B]

    def make_problem():
        return cost, torch.zeros(4, 1, 3, dtype=torch.float64)

    def bits():
        return (lambda b: b.sum(-1)), torch.zeros(4, 3, dtype=torch.float64)

    def wrong_shape():
        return (lambda b: b.sum((-2, -1))[0]), torch.zeros(4, 1, 3, dtype=torch.float64)
    """
)


@pytest.fixture
def problem_file(tmp_path):
    path = tmp_path / "bandit.py"
    path.write_text(BANDIT)
    return path


def test_measures_the_users_problem_and_records_its_file(problem_file, tmp_path, capsys):
    out = tmp_path / "out"
    spec = f"{problem_file}:make_problem"
    args = ["--objective", spec, "--samples", "200", "--estimator", "rloo", "--out", str(out), "--quiet"]
    code = main(["variance", *args])
    assert code in (0, None)
    (run,) = out.iterdir()
    manifest = read_manifest(run)
    assert manifest["config"]["objective"] == spec
    assert manifest["point"]["objective_sha256"] == hashlib.sha256(problem_file.read_bytes()).hexdigest()
    table = read_table(run / "variance.parquet")
    assert set(table["problem"]) == {"user"} and set(table["latent"]) == {"categorical"}
    assert table["bias_norm"].notna().all()  # 3 codes per row: enumerated


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--objective", "{dir}/absent.py:make_problem"], "no file {dir}/absent.py"),
        (["--objective", "{dir}/bandit.py:missing"], "defines no 'missing'"),
        (["--objective", "{dir}/bandit.py:wrong_shape"], "to values [2, 4]"),
        (["--objective", "{dir}/bandit.py:make_problem", "--dim", "3"], "drop --dim"),
        (["--objective", "{dir}/bandit.py:make_problem", "--dtype", "float32"], "drop --dtype"),
        (["--objective", "{dir}/bandit.py:make_problem", "--estimator", "disarm"], "no categorical version"),
        (
            ["--objective", "{dir}/bandit.py:make_problem", "--estimator", "exact-baseline"],
            "exact-baseline needs the objective's expectation (dcvbench.objectives.HasExpectation)",
        ),
        (
            ["--objective", "{dir}/bandit.py:bits", "--estimator", "vimco"],
            "vimco needs the objective's proposal_in_weight",
        ),
    ],
)
def test_bad_objectives_are_one_line_exit_2_nothing_written(problem_file, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    code = main(["variance", *(arg.format(dir=tmp_path) for arg in args), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert message.format(dir=tmp_path) in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
