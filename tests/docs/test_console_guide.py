"""docs/console.md: its commands start real consoles for each role, and its pictures are
the screenshots tests/console/test_browser_story.py takes."""

from __future__ import annotations

import re
from pathlib import Path

from oncofed.client.sandbox import HDAB, Sandbox
from tests.docs.conftest import ROOT, guide_reader, run_guide

GUIDE = ROOT / "docs" / "console.md"
STORY = ROOT / "tests" / "console" / "test_browser_story.py"


def test_console_guide(tmp_path: Path, lung_four_centres: Sandbox) -> None:
    values = guide_reader(lung_four_centres, "console-reader", "lung-console-2026")
    values["~/.oncofed/hdab-fi"] = str(lung_four_centres.credentials(HDAB))
    node = lung_four_centres.node_names[0]
    values["/etc/oncofed/node.toml"] = str(lung_four_centres.node_config(node))
    guide = run_guide("docs/console.md", tmp_path, values=values)
    assert guide.ran >= 4
    # The install command alone is not run: the test extra, which CI installs, includes it.
    assert [b.text for b in guide.not_run] == ['$ pip install -e ".[console]"']


def test_every_picture_is_a_screenshot_the_story_takes() -> None:
    shown = set(re.findall(r"\]\(console/([\w-]+)\.png\)", GUIDE.read_text()))
    taken = set(re.findall(r'screenshot\(\s*page,\s*"([\w-]+)"', STORY.read_text()))
    taken |= set(re.findall(r'\("[^"]+", "([\w-]+)"\)', STORY.read_text()))  # the operator loop
    assert shown <= taken, f"pictures no test takes: {sorted(shown - taken)}"
    for name in shown:
        assert (GUIDE.parent / "console" / f"{name}.png").is_file(), name
