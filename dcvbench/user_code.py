"""Loading a function from the user's own Python file: ``path/to/file.py:name``.

Loading **runs the file**: it is imported as a module, with every statement at its top level
executed, exactly as ``python path/to/file.py`` would run them short of ``if __name__ == "__main__"``.
Load only files you would run. :func:`load_user_problem` loads and checks the problem that
``dcvbench variance --objective FILE.py:NAME`` measures. A file that cannot be loaded — missing,
not ``.py``, a syntax error, an exception while it runs, no such name, a name that is not callable —
is a :class:`~dcvbench.runtime.ConfigError` of one line naming the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from dcvbench.failures import describe
from dcvbench.problems.user import UserProblem, user_problem
from dcvbench.runtime import ConfigError


def split_spec(spec: str, what: str) -> tuple[Path, str]:
    """``"dir/file.py:name"`` → ``(Path("dir/file.py"), "name")``; the last colon separates them."""
    path, colon, name = spec.rpartition(":")
    if not colon or not path or not name.isidentifier():
        raise ConfigError(f"{what} {spec!r}: give FILE.py:NAME, a Python file and a function in it")
    return Path(path), name


def load_callable(spec: str, what: str) -> Callable:
    """The callable ``name`` of the Python file of ``spec`` (``"path/to/file.py:name"``), its file
    imported as a module: **its code runs**. ``what`` names the option in errors (``"--objective"``).
    """
    path, name = split_spec(spec, what)
    if path.suffix != ".py":
        raise ConfigError(f"{what} {spec}: {path} is not a Python file (.py)")
    if not path.is_file():
        raise ConfigError(f"{what} {spec}: no file {path}")
    module = _import_file(path, what)
    if not hasattr(module, name):
        raise ConfigError(f"{what} {spec}: {path} defines no {name!r}")
    found = getattr(module, name)
    if not callable(found):
        raise ConfigError(f"{what} {spec}: {name} in {path} is a {type(found).__name__}, not a function")
    return found


def file_sha256(spec: str, what: str) -> str:
    """The SHA-256 of the bytes of ``spec``'s file: what a manifest records of the code it ran."""
    path, _ = split_spec(spec, what)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _import_file(path: Path, what: str):
    # A private module name per file (its digest), registered while it runs: dataclasses and pickling
    # inside the file look their module up in sys.modules.
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    module_name = f"dcvbench_user_{path.stem}_{digest}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except SyntaxError as error:
        del sys.modules[module_name]
        raise ConfigError(f"{what}: {path}, line {error.lineno}: syntax error: {error.msg}") from None
    except (Exception, SystemExit) as error:  # the user's code may exit(): still one line, exit 2
        del sys.modules[module_name]
        raise ConfigError(f"{what}: running {path} raised {describe(error)}") from None
    return module


def load_user_problem(spec: str, what: str = "--objective") -> UserProblem:
    """Import ``spec``'s file (``"path/to/file.py:make_problem"``: **its code runs**), call the
    function with no arguments and check what it returns
    (:func:`~dcvbench.problems.user.user_problem`)."""
    make_problem = load_callable(spec, what)
    try:
        made = make_problem()
    except Exception as error:
        raise ConfigError(f"{what} {spec}: calling it raised {describe(error)}") from None
    return user_problem(made, f"{what} {spec}")
