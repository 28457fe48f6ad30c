"""Problems know nothing of estimators: they import only the latent families, the objective protocols,
the bottom layer's ``ConfigError`` and failure descriptions (for the checks of a user's problem), and
each other (structured prediction reuses the VAE's networks and bound)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dcvbench.problems

MODULES = sorted(Path(dcvbench.problems.__file__).parent.glob("*.py"))
ALLOWED = (
    "dcvbench.latent",
    "dcvbench.objectives",
    "dcvbench.problems",
    "dcvbench.runtime",
    "dcvbench.failures",
)


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.name)
def test_problems_import_only_the_layers_below_them(path: Path):
    imported = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.append(node.module)
        elif isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
    ours = [name for name in imported if name.split(".")[0] == "dcvbench"]
    outside = [name for name in ours if not any(name == a or name.startswith(a + ".") for a in ALLOWED)]
    assert not outside, f"{path.name} imports {outside}"
