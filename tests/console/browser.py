"""Headless Chromium for the console's tests: Debian's `chromium` driven by Playwright.

Playwright cannot download its own browsers here, so it launches the system's
(`executable_path`). axe-core (bundled by axe-playwright-python) checks each
page, and screenshots go to docs/console/ when ONCOFED_DOCS_UPDATE=1 (as the
guides' outputs do, decision 0027) and to a temporary folder otherwise.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "console"
BLOCKING_IMPACTS = ("serious", "critical")


def chromium_path() -> str:
    """The system Chromium, or a skip saying how to get one."""
    for candidate in ("chromium", "chromium-browser"):
        found = shutil.which(candidate)
        if found is not None:
            return found
    pytest.skip(
        "no Chromium on this machine: install Debian's `chromium` package "
        "(.ci/run does: apt-get install chromium)"
    )


def assert_accessible(page: Any, what: str) -> None:
    """axe-core in the page: no serious or critical WCAG violation."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    blocking = [v for v in results.response["violations"] if v.get("impact") in BLOCKING_IMPACTS]
    assert not blocking, f"{what}: " + "; ".join(
        f"{v['id']} ({v['impact']}): {v['help']} at "
        + ", ".join(str(n["target"]) for n in v["nodes"][:3])
        for v in blocking
    )


def screenshot(page: Any, name: str, folder: Path) -> Path:
    """A full-page screenshot, into docs/console/ when the docs are being updated."""
    target = SCREENSHOTS if os.environ.get("ONCOFED_DOCS_UPDATE") == "1" else folder
    target.mkdir(parents=True, exist_ok=True)
    path = target / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
