"""Bad input to the Concrete paper's experiments (``vae`` with several stochastic layers or another
objective, ``predict``): one line on stderr, exit code 2, and nothing written.

As in :mod:`tests.test_bad_input`: each row is one invocation and a fragment its message must hold;
everything below the test's own directory (the working directory, where a default ``--out`` would
land, and the ``--out`` given) is snapshotted, contents included, and must be unchanged.
"""

import pytest

from dcvbench.cli import main
from tests.test_bad_input import snapshot

CASES = [
    # vae: architectures with several stochastic layers
    (
        ["vae", "--arch", "200H-200H-500V"],
        "architecture '200H-200H-500V' ends in 500V, but the images have 784",
    ),
    (["vae", "--arch", "200H-~784V"], "unknown architecture '200H-~784V'; choose from: linear, nonlinear,"),
    (
        ["vae", "--arch", "200H-200H-784V", "--latent", "categorical"],
        "--arch 200H-200H-784V has 2 stochastic layers: binary latents only",
    ),
    (
        ["vae", "--arch", "200H-200H-784V", "--latent-vars", "100"],
        "--arch 200H-200H-784V has 200 latents next to the pixels, but --latent-vars is 100",
    ),
    (
        ["vae", "--arch", "200H-200H-784V", "--kl", "analytic"],
        "--kl analytic is for one stochastic layer; --arch 200H-200H-784V has 2",
    ),
    # vae: objectives
    (
        ["vae", "--objective", "iwae", "--estimator", "rloo"],
        "rloo does not train --objective iwae; it trains elbo",
    ),
    (["vae", "--objective", "foo"], "unknown --objective 'foo'; choose from: elbo, iwae"),
    (
        ["vae", "--estimator", "vimco", "--objective", "elbo"],
        "vimco does not train --objective elbo; it trains iwae",
    ),
    # predict
    (
        ["predict", "--arch", "392V-240H-400V"],
        "architecture '392V-240H-400V' ends with 400V, but the lower half of 784-pixel images has 392",
    ),
    (
        ["predict", "--estimator", "exact-baseline"],
        "exact-baseline runs on the toy and user problems only, not predict",
    ),
    (
        ["predict", "--objective", "iwae", "--estimator", "disarm"],
        "disarm does not train --objective iwae; it trains elbo",
    ),
    (
        ["predict", "--estimator", "st", "--arch", "392V-240H-240H-392V"],
        "st estimates from ∇_h f alone, which is zero above the last layer of 392V-240H-240H-392V",
    ),
    (["predict", "--k", "1", "--estimator", "vimco"], "--k 1: K must be ≥ 2 for vimco, got 1"),
]


@pytest.mark.parametrize(
    ("args", "message"), CASES, ids=lambda value: " ".join(value) if isinstance(value, list) else ""
)
def test_one_line_exit_2_nothing_written(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default --out would land here
    before = snapshot(tmp_path)
    code = main([*args, "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("dcvbench: error:")
    assert message in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert snapshot(tmp_path) == before  # the --out given was not created either
