"""One import root, no generic top-level modules, no PyTorch for a statistics node."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _fresh_python(code: str) -> subprocess.CompletedProcess[str]:
    """A new interpreter outside the checkout, without PYTHONPATH (Ray sets it in-process)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd="/", env=env
    )


def test_top_level_folders_are_subpackages_of_oncofed() -> None:
    import oncofed.coordinator
    import oncofed.node
    import oncofed.privacy
    import oncofed.tasks

    for module, folder in [
        (oncofed.node, "node"),
        (oncofed.coordinator, "coordinator"),
        (oncofed.tasks, "tasks"),
        (oncofed.privacy, "privacy"),
    ]:
        assert Path(module.__file__ or "").resolve().parent == ROOT / folder


def test_no_generic_top_level_modules_are_installed() -> None:
    # A fresh interpreter outside the checkout: only what installation put on the path.
    code = (
        "import importlib.util as u;"
        "found = [m for m in ('node', 'coordinator', 'tasks', 'privacy') if u.find_spec(m)];"
        "assert not found, found"
    )
    run = _fresh_python(code)
    assert run.returncode == 0, run.stderr


def test_a_statistics_node_and_the_coordinator_never_import_torch() -> None:
    code = (
        "import sys, oncofed.node.runner, oncofed.coordinator.server, oncofed.sandbox;"
        "bad = [m for m in ('torch', 'opacus') if m in sys.modules];"
        "assert not bad, bad"
    )
    run = _fresh_python(code)
    assert run.returncode == 0, run.stderr
