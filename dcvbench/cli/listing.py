"""``dcvbench estimators`` and ``dcvbench data``: what there is to run, and on what."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from dcvbench.cli.app import app, data_app, reports_user_errors
from dcvbench.cli.console import stdout
from dcvbench.cli.options import choices
from dcvbench.data import DataError, dataset_info, dataset_names, default_data_dir
from dcvbench.estimators import estimator_class, estimator_info, estimator_names
from dcvbench.latent import LATENT_TYPES
from dcvbench.runtime import ConfigError


@app.command()
@reports_user_errors
def estimators(
    latent: Annotated[
        str | None,
        typer.Option(
            metavar=choices(LATENT_TYPES),
            help="Only the estimators for this latent type.",
            show_default="all",
        ),
    ] = None,
) -> None:
    """List the registered estimators, the latent types each supports, its options and what it needs."""
    if latent is not None and latent not in LATENT_TYPES:
        raise ConfigError(f"unknown --latent {latent!r}; choose from: {', '.join(LATENT_TYPES)}")
    table = Table(title="dcvbench estimators" + ("" if latent is None else f" for {latent} latents"))
    columns = ("name", "latents", "f evals", "unbiased", "K", "needs ∇_b f", "problems", "options")
    names = estimator_names(latent)
    flags = {name: [option.flag for option in _options(name, latent)] for name in names}
    widest_flag = max((len(f"{flag},") for shown in flags.values() for flag in shown), default=1)
    for column in (*columns, "description"):
        # A name and its latent types read whole, and each option flag with its comma (the column is
        # as wide as the widest); the long free text wraps instead.
        table.add_column(
            column,
            no_wrap=column in ("name", "latents"),
            min_width=widest_flag if column == "options" else None,
        )
    for name in names:
        info = estimator_info(name)
        table.add_row(
            name,
            ", ".join(info.families),
            info.evals_rule(),
            "yes" if info.unbiased else "no",
            info.k_rule(),
            "yes" if info.needs_input_grad else "no",
            ", ".join(info.problems),
            ", ".join(flags[name]) or "–",
            escape(info.summary),  # summaries hold brackets (E_q[f]) that rich would read as markup
        )
    stdout.print(table)


def _options(name: str, latent: str | None):
    """The options of estimator ``name`` (for ``latent``, or its first latent type)."""
    return estimator_class(name, latent or estimator_info(name).families[0]).options


@data_app.command("list")
def data_list() -> None:
    """The data sets, their files, and where they are looked for by default."""
    table = Table(title="dcvbench data sets")
    for column in ("name", "description", "files", "default --data-dir"):
        table.add_column(column)
    for name in dataset_names():
        info = dataset_info(name)
        files = ", ".join(info.files) or "embedded (no download)"
        location = "–" if info.embedded else str(default_data_dir(name))
        table.add_row(name, info.description, files, location)
    stdout.print(table)


@data_app.command("download")
@reports_user_errors
def data_download(
    name: Annotated[str, typer.Argument(help="Data set: mnist, fashion-mnist or omniglot.")],
    data_dir: Annotated[
        str | None, typer.Option(help="Where to put the files (default: see `dcvbench data list`).")
    ] = None,
    base_url: Annotated[str | None, typer.Option(help="A mirror to use instead of the defaults.")] = None,
) -> None:
    """Fetch a data set's canonical files, verifying their checksums (needs a network)."""
    from dcvbench.data import download

    if name not in dataset_names():
        raise DataError(f"unknown data set {name!r}; choose from: {', '.join(dataset_names())}")
    if dataset_info(name).embedded:
        stdout.print(f"{name} ships with dcvbench's dependencies: nothing to download")
        return
    for fetched in download(name, data_dir, base_url=base_url):
        verb = "already present and verified" if fetched.url is None else f"fetched from {fetched.url}"
        stdout.print(f"{fetched.path}: {verb}")
