"""One import root, no generic top-level modules, no PyTorch for a statistics node."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

from tests.layout import package_dirs


def _fresh_python(code: str) -> subprocess.CompletedProcess[str]:
    """A new interpreter outside the checkout, without PYTHONPATH (Ray sets it in-process)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd="/", env=env
    )


def test_top_level_folders_are_subpackages_of_oncofed() -> None:
    for name, folder in package_dirs().items():
        module = importlib.import_module(name)
        assert Path(module.__file__ or "").resolve().parent == folder


GENERIC = tuple(name.rpartition(".")[2] for name in package_dirs() if name != "oncofed")


def test_no_generic_top_level_modules_are_installed() -> None:
    # A fresh interpreter outside the checkout: only what installation put on the path.
    code = (
        "import importlib.util as u;"
        f"found = [m for m in {GENERIC!r} if u.find_spec(m)];"
        "assert not found, found"
    )
    run = _fresh_python(code)
    assert run.returncode == 0, run.stderr


def test_a_statistics_node_and_the_coordinator_never_import_torch() -> None:
    code = (
        "import sys, oncofed.node.runner, oncofed.coordinator.server, oncofed.client.sandbox;"
        "bad = [m for m in ('torch', 'opacus') if m in sys.modules];"
        "assert not bad, bad"
    )
    run = _fresh_python(code)
    assert run.returncode == 0, run.stderr
