"""What a newcomer reads and is told: ``--help``, ``--version``, warnings, ``--threads``.

Contradictions refused (one line, exit 2, nothing written) are rows of tests/test_bad_input.py.
"""

import re

import pytest
import torch
import typer
from typer.testing import CliRunner

import dcvbench
from dcvbench.cli import app, main
from dcvbench.cli.variance import PROBLEMS
from dcvbench.config import ANNEAL_SCHEDULES, TOY_OBJECTIVES, VAE_PROTOCOLS, VAR_METHODS
from dcvbench.data import dataset_names
from dcvbench.estimators import (
    EstimatorError,
    estimator_info,
    estimator_names,
    estimator_options,
    get_estimator,
)
from dcvbench.estimators.registry import option_users
from dcvbench.latent import LATENT_TYPES
from dcvbench.problems import predict as predict_problem
from dcvbench.problems import vae as vae_problem
from dcvbench.results import find_runs, read_manifest
from dcvbench.runtime import DEVICES, DTYPES
from dcvbench.sweep import BACKENDS

runner = CliRunner()
WIDE = {"COLUMNS": "200"}  # wide enough that a choice is never cut by the help's wrapping
TOY_OBJECTIVE_NAMES = tuple(dict.fromkeys(name for names in TOY_OBJECTIVES.values() for name in names))
TRAINING = {"dataset": dataset_names(), "var-method": VAR_METHODS, "objective": vae_problem.BOUNDS}
TRAINING |= {"anneal": ANNEAL_SCHEDULES, "device": DEVICES, "estimator": estimator_names()}
TOY = {"latent": LATENT_TYPES, "objective": TOY_OBJECTIVE_NAMES, "device": DEVICES, "dtype": tuple(DTYPES)}
TOY |= {"estimator": estimator_names()}
# Each command's options with fixed values, and those values, as the library knows them.
FIXED_CHOICES = {
    "toy": TOY,
    "variance": {**TOY, "problem": PROBLEMS},
    "vae": {**TRAINING, "latent": LATENT_TYPES, "protocol": tuple(VAE_PROTOCOLS)}
    | {"kl": vae_problem.KL_VARIANTS, "arch": vae_problem.ARCHITECTURES},
    "predict": {**TRAINING, "arch": predict_problem.ARCHITECTURES},
    "sweep": {"backend": BACKENDS},
    "estimators": {"latent": LATENT_TYPES},
}
TINY_TOY = ["toy", "--dim", "4", "--steps", "4", "--log-every", "4", "--var-every", "4", "--var-samples", "2"]
TINY_TOY += ["--device", "cpu", "-q"]


def command_paths(command: typer.core.TyperGroup, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group under ``command``, as the words that name it (``("data", "list")``)."""
    paths = [prefix]
    for name, sub in getattr(command, "commands", {}).items():
        paths += command_paths(sub, (*prefix, name))
    return paths


COMMANDS = command_paths(typer.main.get_command(app))


def help_of(*words: str) -> str:
    result = runner.invoke(app, [*words, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return result.output


def option_row(help_text: str, flag: str) -> list[str]:
    """The words of ``flag``'s row in a help panel: its metavar, its help and its default."""
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"│\s+{re.escape(flag)}\s", line))
    end = next(
        (i for i in range(start + 1, len(lines)) if re.match(r"│\s+-", lines[i]) or "─" in lines[i]),
        len(lines),
    )
    return re.split(r"[\s,|\[\]().:;]+", " ".join(lines[start:end]))


def test_version_prints_the_package_version_and_exits_0(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"dcvbench {dcvbench.__version__}\n"


@pytest.mark.parametrize("command", [job for job in FIXED_CHOICES])
def test_every_fixed_choice_is_listed_on_its_option(command):
    help_text = help_of(command)
    choices = dict(FIXED_CHOICES[command])
    if command in ("toy", "vae", "predict", "variance"):  # the estimators' own options with choices
        choices |= {
            option.flag[2:]: option.choices
            for option in estimator_options(command).values()
            if option.choices is not None
        }
    for flag, values in choices.items():
        row = option_row(help_text, f"--{flag}")
        missing = [value for value in values if value not in row]
        assert not missing, f"{command} --{flag} does not list {missing}"


@pytest.mark.parametrize("words", COMMANDS, ids=lambda words: " ".join(words) or "dcvbench")
def test_help_shows_no_bool_metavar_no_private_reference_and_rounded_defaults(words):
    help_text = help_of(*words)
    assert "<bool>" not in help_text
    assert "DESIGN" not in help_text and "§" not in help_text
    assert not re.search(r"\d\.\d{5,}", help_text)  # 2/3, not 0.6666666666666666


def test_a_fraction_default_is_shown_as_a_fraction():
    assert "2/3" in option_row(help_of("vae"), "--temperature")


def test_vae_options_are_grouped_in_panels():
    panels = re.findall(r"╭─ (.+?) ─", help_of("vae"))
    assert len(panels) >= 5 and "Options" not in panels  # --help itself sits in the last panel
    assert panels[0] == "Estimators"


def test_a_mistyped_estimator_suggests_the_closest_name(tmp_path, capsys):
    with pytest.raises(EstimatorError, match="unknown estimator 'rlo-dcv'; did you mean 'rloo-dcv'\\?"):
        estimator_info("rlo-dcv")
    with pytest.raises(EstimatorError, match="'rlo-dcv' for categorical latents; did you mean 'rloo-dcv'\\?"):
        get_estimator("rlo-dcv", latent="categorical")
    assert main(["toy", "--estimator", "rlo-dcv", "--out", str(tmp_path / "out")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == "dcvbench: error: unknown estimator 'rlo-dcv'; did you mean 'rloo-dcv'?"
    assert not (tmp_path / "out").exists()


def test_an_option_no_chosen_estimator_uses_is_warned_about_once(tmp_path, capsys):
    args = [*TINY_TOY, "--estimator", "rloo", "--estimator", "disarm", "--seed", "1", "--seed", "2"]
    assert main([*args, "--temperature", "0.3", "--out", str(tmp_path)]) == 0
    (warning,) = capsys.readouterr().err.splitlines()
    users = ", ".join(option_users("temperature"))  # concrete, st-concrete, …
    assert warning == (
        f"dcvbench: warning: --temperature is used by {users}; "
        "none of the chosen estimators (rloo, disarm) uses it"
    )
    assert len(find_runs(tmp_path)) == 4  # a warning, not a refusal
    assert main([*TINY_TOY, "--estimator", "concrete", "--temperature", "0.3", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().err == ""


def test_threads_reach_torch_and_the_manifest_and_are_restored(tmp_path):
    before = torch.get_num_threads()
    assert main([*TINY_TOY, "--estimator", "rloo", "--threads", "2", "--out", str(tmp_path)]) == 0
    (run,) = find_runs(tmp_path)
    manifest = read_manifest(run)
    assert manifest["config"]["threads"] == 2 and manifest["versions"]["torch_threads"] == 2
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("job", ["toy", "vae", "predict"])
def test_resume_passes_threads_only_when_given(job, monkeypatch, tmp_path):
    # The job's resume is replaced by a spy that stops the command: what matters is what it was given.
    received = []

    def spy(run_dir, progress=None, threads=None):
        received.append(threads)
        raise dcvbench.runtime.ConfigError("stop")

    monkeypatch.setattr(f"dcvbench.jobs.{job}.resume_{job}", spy)
    assert main([job, "--resume", str(tmp_path), "--threads", "3", "-q"]) == 2
    assert main([job, "--resume", str(tmp_path), "-q"]) == 2
    assert received == [3, None]


def test_a_job_option_only_relaxations_read_is_warned_about(tmp_path, capsys):
    args = "vae --estimator rloo --latent-vars 8 --batch-size 20 --steps 2 --log-every 2 --eval-every 2"
    args += f" --var-every 2 --var-samples 2 --eval-samples 2 --device cpu -q --kl analytic --out {tmp_path}"
    assert main(args.split()) == 0
    (warning,) = capsys.readouterr().err.splitlines()
    assert (
        warning == "dcvbench: warning: --kl is used by concrete; none of the chosen estimators (rloo) uses it"
    )
