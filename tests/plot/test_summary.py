"""``summary.md``: its links, notes and columns."""

import re

from dcvbench.plot import (
    plot_results,
)
from tests.plot.conftest import (
    write_toy,
)


def test_summary_md_links_its_figures_keeps_the_study_columns_and_says_one_seed(runs, tmp_path):
    write_toy(runs / "single", "rloo", 0, latent="categorical")  # a group of one seed
    report = plot_results(runs, fmt="svg")
    markdown = (report.out_dir / "summary.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", markdown)
    assert {report.out_dir / link for link in links} == {figure.path for figure in report.figures}
    assert all((report.out_dir / link).is_file() and "/" not in link for link in links)  # relative, beside it
    sections = dict(re.findall(r"\n## (\S+)\n\n(.*?)(?=\n## |\Z)", markdown, flags=re.S))
    assert "Mean ± s.e. over 2 seeds." in sections["toy-separable-d8-k2"]
    assert "One seed, no standard error." in sections["toy-categorical-separable-n8-c4-k2"]
    assert "| 0.25 ± " not in sections["toy-categorical-separable-n8-c4-k2"]  # a value, not a ± with no s.e.
    study = sections["variance-toy-separable-d8-theta0.7"]
    # One study has no s.e. over studies; its quality measures have theirs, from the draws.
    assert "One study, no standard error; bias norm, MSE and cosine ± their s.e. from the draws." in study
    assert (
        "| estimator | K | evals | variance | vs rloo | variance×evals | α* | bias max \\|z\\| "
        "| bias norm | MSE | cosine | s/estimate |" in study
    )
    assert (
        "| rloo-dcv | 2 | 2 | 0.5 | 0.25 | 1 | -0.5 | 2.5 | 0.2 ± 0.01 | 4 ± 0.05 | 0.5 ± 0.02 | 0.0002 |"
        in study
    )
    estimators = re.findall(r"^\| (rloo|rloo-dcv|disarm) \| 2 \|", study, flags=re.M)
    assert estimators == ["rloo", "rloo-dcv", "disarm"]  # registry order, as the terminal's tables
