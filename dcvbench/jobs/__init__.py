"""Jobs wire a problem, estimators, measurement and results together; the CLI only calls them.

A job reports progress through a :class:`Progress` object it is given, so it knows nothing of
terminals; the CLI passes a rich progress bar, library users nothing (:class:`NoProgress`).
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, description: str, total: int) -> None:
        """A new unit of work (one run) with ``total`` steps begins."""

    def advance(self, steps: int = 1) -> None: ...


class NoProgress:
    """Progress that reports nothing."""

    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, steps: int = 1) -> None:
        pass
