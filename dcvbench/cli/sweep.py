"""``dcvbench sweep``: a grid of runs, each one invocation of a job's command."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer
from rich.table import Table

from dcvbench.cli.app import CLICK_ERROR, USER_ERRORS, app, reports_user_errors
from dcvbench.cli.console import RichProgress, stdout
from dcvbench.cli.options import Out, Quiet, choices
from dcvbench.cli.predict import predict_config
from dcvbench.cli.toy import toy_config
from dcvbench.cli.vae import vae_config
from dcvbench.cli.variance import variance_config
from dcvbench.runtime import ConfigError
from dcvbench.sweep import BACKENDS, JobCommand, SweepCounts, expand, load_spec, merged_note, run_sweep

SWEEP = "Sweep"  # the panel of the sweep's own options in its --help, before those of each run (RUN)
CONFIGURE: dict[str, Callable[[typer.Context], Any]] = {
    "toy": toy_config,
    "vae": vae_config,
    "predict": predict_config,
    "variance": variance_config,
}


def job_commands() -> dict[str, JobCommand]:
    """Each job's command line as a sweep needs it: its parameters, its parser, its configuration."""
    commands = typer.main.get_command(app).commands
    return {
        job: JobCommand(
            params={param.name: param for param in commands[job].params},
            parse=functools.partial(_parse, commands[job], job),
            configure=functools.partial(_configure, job),
        )
        for job in CONFIGURE
    }


def _parse(command, job: str, args: Sequence[str]) -> typer.Context:
    """``dcvbench JOB ARGS`` parsed as the command parses it (defaults filled in); nothing runs."""
    try:
        return command.make_context(job, list(args))
    except CLICK_ERROR as error:
        raise ConfigError(error.format_message()) from None


def _configure(job: str, ctx: typer.Context) -> Any:
    """The configuration the command builds from its parsed arguments."""
    try:
        return CONFIGURE[job](ctx)
    except USER_ERRORS as error:
        raise ConfigError(str(error)) from None


@app.command()
@reports_user_errors
def sweep(
    spec: Annotated[
        str, typer.Argument(metavar="SPEC.toml", help="The job, its fixed options, the grid to cross.")
    ],
    backend: Annotated[
        str,
        typer.Option(
            metavar=choices(BACKENDS),
            help="local (runs at once on this machine) or dask (a cluster on 127.0.0.1).",
            rich_help_panel=SWEEP,
        ),
    ] = "local",
    workers: Annotated[
        int | None,
        typer.Option(
            help="Runs at once, each with cores/N threads.",
            show_default="one per core",
            rich_help_panel=SWEEP,
        ),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            metavar="ADDRESS",
            help="Run on this existing Dask cluster (tcp://HOST:8786) instead.",
            rich_help_panel=SWEEP,
        ),
    ] = None,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="Start again the runs that failed or diverged before.",
            rich_help_panel=SWEEP,
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Print each run's invocation, one a line; run nothing.", rich_help_panel=SWEEP
        ),
    ] = False,
    out: Out = "results",
    quiet: Quiet = False,
) -> None:
    """A grid of toy, VAE, predict or variance runs; a re-launch finishes those not finished."""
    parsed = load_spec(spec, job_commands())
    runs = expand(parsed)
    merged = merged_note(runs)
    if merged is not None:  # on stderr: --dry-run's stdout stays one invocation a line
        print(f"dcvbench: {merged}", file=sys.stderr)
    if dry_run:
        for run in runs:
            print(run.command(out))
        return
    with RichProgress(quiet) as progress:
        progress.start("sweep", len(runs))

        def show(counts: SweepCounts) -> None:
            description = f"sweep: {counts.running} running, {counts.failed} failed"
            progress.bar.update(progress.task, completed=counts.done, description=description)

        results = run_sweep(
            runs,
            out,
            backend=backend,
            workers=workers,
            scheduler=scheduler,
            retry_failed=retry_failed,
            on_progress=show,
        )
    unfinished = [result for result in results if not result.done]
    if quiet:
        for r in unfinished:
            said = f"{r.status}: {r.note}" if r.note else r.status
            print(f"dcvbench: {r.run.key}: {said}; a re-launch will {r.relaunch}", file=sys.stderr)
        for result in results:
            if result.run_dir is not None:
                print(result.run_dir)
    else:
        caption = f"{len(runs)} runs, {len(unfinished)} not finished"
        table = Table(title=f"sweep: {parsed.title}", caption=caption)
        for column in ("run", "status", "run dir", "note", "a re-launch will"):
            table.add_column(column)
        for r in results:
            status = r.status if r.exit_code is None else f"{r.status} (exit {r.exit_code})"
            table.add_row(r.run.label, status, str(r.run_dir or "–"), r.note, r.relaunch)
        stdout.print(table)
    if unfinished:  # 0 only when every run is done: finished now, resumed, or skipped as finished before
        raise typer.Exit(1)
