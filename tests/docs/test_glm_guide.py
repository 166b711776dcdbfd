"""docs/analyses/glm.md runs as written against four lung cancer centres."""

from __future__ import annotations

from pathlib import Path

from oncofed.client.sandbox import Sandbox
from tests.docs.conftest import guide_reader, run_guide


def test_glm_guide(tmp_path: Path, lung_four_centres: Sandbox) -> None:
    values = guide_reader(lung_four_centres, "glm-reader", "lung-glm-2026")
    guide = run_guide("docs/analyses/glm.md", tmp_path, values=values)
    assert guide.ran >= 9
    assert not guide.not_run
