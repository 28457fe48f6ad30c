"""The ``dcvbench`` application: its Typer app, the entry point, and how errors and signals end a run.

Bad input ends in one line on stderr and exit code 2, never a traceback: Typer's own usage errors
(an unknown option, a value of the wrong type) and the library's (:data:`USER_ERRORS`, found when a
configuration is built or a file is read) alike. A run that fails (its trace cannot be written, it
runs out of memory) ends in one line too, with exit code 1: its manifest holds the traceback.
"""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from typing import Annotated

import typer
from typer.core import TyperCommand, TyperGroup

from dcvbench import __version__
from dcvbench.data import DataError
from dcvbench.estimators import EstimatorError
from dcvbench.failures import describe, out_of_memory
from dcvbench.results import ResultsError, RunFailed
from dcvbench.runtime import STOP_SIGNALS, ConfigError

# Typer bundles its own click; its exceptions are reachable only through Typer's public classes.
CLICK_ERROR = next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException")
USER_ERRORS = (ConfigError, DataError, EstimatorError, ResultsError)


class HelpLayout:
    """A command whose ``--help`` shows no value type beside a flag (Typer shows ``<bool>``, as if
    ``--quiet`` took one), and lists ``--help`` itself in the last panel of grouped options rather
    than alone in a panel of its own."""

    def get_params(self, ctx: typer.Context) -> list:
        params = super().get_params(ctx)
        # The panels in the order --help prints them (of their first options).
        panels = [
            panel for panel in dict.fromkeys(getattr(p, "rich_help_panel", None) for p in params) if panel
        ]
        for param in params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
        help_option = self.get_help_option(ctx)
        if help_option is not None and panels:
            help_option.rich_help_panel = panels[-1]
        return params


class Command(HelpLayout, TyperCommand):
    """A job's command."""


class Group(HelpLayout, TyperGroup):
    """A group of commands (``dcvbench``, ``dcvbench data``)."""


class App(typer.Typer):
    """A Typer app whose commands are :class:`Command` objects."""

    def command(self, *args, cls: type[TyperCommand] = Command, **kwargs):
        return super().command(*args, cls=cls, **kwargs)


app = App(
    cls=Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Benchmark gradient estimators for discrete latent variables, side by side.",
)
data_app = App(cls=Group, no_args_is_help=True, help="Data sets for the VAE: list them, download them.")
app.add_typer(data_app, name="data")


def print_version(value: bool) -> None:
    """``dcvbench --version``: print ``dcvbench X.Y.Z`` and exit."""
    if value:
        print(f"dcvbench {__version__}")
        raise typer.Exit(0)


@app.callback()
def dcvbench(
    version: Annotated[
        bool,
        typer.Option("--version", callback=print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Benchmark gradient estimators for discrete latent variables, side by side."""


def main(argv: list[str] | None = None) -> int:
    """Entry point: every usage error becomes one line on stderr and exit code 2.

    Ctrl-C (SIGINT) exits with 130 and SIGTERM with 143, after the run in progress has flushed
    what it measured and marked itself ``interrupted``: the first signal is raised as a
    KeyboardInterrupt; any further one, while that clean-up runs, is noted and ignored, so an
    impatient second Ctrl-C (or a process manager's second SIGTERM) cannot cut the clean-up short.
    """
    received: list[int] = []

    def on_stop_signal(signum, frame) -> None:
        received.append(signum)
        if len(received) == 1:
            raise KeyboardInterrupt
        if len(received) == 2:
            print("dcvbench: still saving what was measured; stopping when that is done", file=sys.stderr)

    previous = {signum: signal.signal(signum, on_stop_signal) for signum in STOP_SIGNALS}
    try:
        # Typer answers an interruption itself in this mode: it returns exit code 130.
        code = app(args=argv, prog_name="dcvbench", standalone_mode=False)
    except CLICK_ERROR as error:
        print(f"dcvbench: error: {error.format_message()}", file=sys.stderr)
        code = 2
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if code == 130:
        terminated = bool(received) and received[0] == signal.SIGTERM
        print(f"dcvbench: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        code = 143 if terminated else 130
    if argv is None:
        sys.exit(code or 0)
    return code or 0


def reports_user_errors(command: Callable) -> Callable:
    """Turn bad input found by the library into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as error:
            print(f"dcvbench: error: {error}", file=sys.stderr)
            raise typer.Exit(2) from None
        except RunFailed as error:
            print(f"dcvbench: error: {error}", file=sys.stderr)
            raise typer.Exit(1) from None
        except (MemoryError, RuntimeError) as error:
            # Out of memory before any run exists (a run that exists records it and fails): what was
            # asked for, in one line; a RuntimeError that is no failed allocation is a bug, raised.
            if out_of_memory(error) is None:
                raise
            print(f"dcvbench: error: {describe(error)}", file=sys.stderr)
            raise typer.Exit(2) from None

    return wrapper
