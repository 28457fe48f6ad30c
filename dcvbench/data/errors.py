"""The one error type of the data layer."""

from __future__ import annotations


class DataError(ValueError):
    """A data set cannot be loaded or fetched: a missing or corrupt file, an unknown name, a bad split.

    The message is one line that names the file (or the bad value) and says what to do, so the CLI can
    print it as a usage error without a traceback.
    """
