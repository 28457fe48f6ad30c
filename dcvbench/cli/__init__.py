"""The ``dcvbench`` command line: parse options, call the library, report. Nothing else lives here.

One module per command (group); importing this package registers each on :data:`app`.
"""

# isort: off
from dcvbench.cli.app import app, main
from dcvbench.cli.console import RichProgress
from dcvbench.cli import listing, toy, vae, predict, variance, train, plot, sweep  # noqa: F401  (registers the commands)

# isort: on

__all__ = ["RichProgress", "app", "main"]
