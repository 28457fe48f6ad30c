"""Loading the user's ``FILE.py:NAME``: its code runs; anything wrong is one line naming the file."""

import pytest

from dcvbench.runtime import ConfigError
from dcvbench.user_code import file_sha256, load_callable


def write(directory, text: str, name: str = "problem.py"):
    path = directory / name
    path.write_text(text)
    return path


def test_loads_the_named_function_running_the_file(tmp_path):
    text = "from dataclasses import dataclass\n@dataclass\nclass P:\n    x: int = 1\n"
    path = write(tmp_path, text + "def make_problem():\n    return P()\n")
    make_problem = load_callable(f"{path}:make_problem", "--objective")
    assert make_problem().x == 1  # a dataclass in the file works: its module is registered while it runs


def test_the_digest_is_of_the_files_bytes(tmp_path):
    import hashlib

    path = write(tmp_path, "def f():\n    return 1\n")
    assert file_sha256(f"{path}:f", "--objective") == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("text", "spec", "message"),
    [
        (None, "{dir}/absent.py:make", "no file {dir}/absent.py"),
        ("x = 1\n", "{dir}/problem.txt:make", "is not a Python file (.py)"),
        ("x = 1\n", "{dir}/problem.py", "give FILE.py:NAME"),
        ("x = 1\n", "{dir}/problem.py:not-a-name", "give FILE.py:NAME"),
        ("def make(:\n", "{dir}/problem.py:make", "line 1: syntax error"),
        ("raise RuntimeError('no GPU here')\n", "{dir}/problem.py:make", "raised RuntimeError: no GPU here"),
        ("import sys\nsys.exit(3)\n", "{dir}/problem.py:make", "raised SystemExit: 3"),
        ("x = 1\n", "{dir}/problem.py:make", "defines no 'make'"),
        ("make = 3\n", "{dir}/problem.py:make", "make in {dir}/problem.py is a int, not a function"),
    ],
)
def test_bad_files_and_names_are_one_line(tmp_path, text, spec, message):
    if text is not None:
        write(tmp_path, text, "problem.txt" if ".txt" in spec else "problem.py")
    with pytest.raises(ConfigError) as raised:
        load_callable(spec.format(dir=tmp_path), "--objective")
    assert message.format(dir=tmp_path) in str(raised.value)
    assert "\n" not in str(raised.value)
