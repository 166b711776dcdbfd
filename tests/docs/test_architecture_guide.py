"""docs/architecture.md: its example runs a task under Flower's own simulation runtime."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.docs.conftest import run_guide

pytestmark = pytest.mark.slow  # Ray starts a cluster on this machine


def test_architecture_guide(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Flower's simulation runtime needs oncofed[simulation]")
    environment = dict(os.environ)
    try:
        guide = run_guide("docs/architecture.md", tmp_path)
    finally:
        # Ray writes PYTHONPATH and other variables into this process; later tests spawn processes.
        os.environ.clear()
        os.environ.update(environment)
    assert guide.ran == 1
    assert not guide.not_run
