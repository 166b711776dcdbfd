"""The layers hold: import-linter's contracts, and Flower's internals behind one adapter.

Bottom up: ``kernel`` (errors, schema, wire, the Flower adapter); ``privacy``
and ``governance`` beside each other; ``tasks``; ``node`` and ``coordinator``
beside each other; ``client`` on top (pyproject's ``[tool.importlinter]``).
An import inside a function counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.layout import ROOT, installed_tree, package_dirs

FLOWER_ADAPTER = ROOT / "kernel" / "flower.py"
# Flower's public Message API: what task code is written against (decision 0002).
FLOWER_PUBLIC = ("flwr.app", "flwr.clientapp", "flwr.serverapp", "flwr.simulation")


def test_import_linter_contracts_hold(tmp_path: Path) -> None:
    lint_imports = shutil.which("lint-imports")
    if lint_imports is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    # grimp walks the package's folder and does not follow symlinks: a copy, as installed.
    installed_tree(tmp_path / "tree", copy=True)
    run = subprocess.run(
        [lint_imports, str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "tree")},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def _flower_imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return [n for n in names if n == "flwr" or n.startswith("flwr.")]


def test_only_the_flower_adapter_touches_flower_internals() -> None:
    internal = {
        str(path.relative_to(ROOT)): name
        for folder in package_dirs().values()
        for path in folder.rglob("*.py")
        if path != FLOWER_ADAPTER
        for name in _flower_imports(path)
        if not any(name == p or name.startswith(p + ".") for p in FLOWER_PUBLIC)
    }
    assert not internal, f"Flower internals outside kernel/flower.py: {internal}"
