"""ruff and mypy over the whole import root, as part of the suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.layout import ROOT, installed_tree


def test_ruff_clean() -> None:
    if shutil.which("ruff") is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    run = subprocess.run(["ruff", "check", str(ROOT)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_mypy_strict(tmp_path: Path) -> None:
    """mypy sees the installed layout: top-level folders as ``oncofed.<name>``."""
    pytest.importorskip("mypy")
    tree = installed_tree(tmp_path) / "oncofed"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            "--exclude",
            "migrations/",
            str(tree),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout.replace(str(tmp_path) + "/", "") + run.stderr
