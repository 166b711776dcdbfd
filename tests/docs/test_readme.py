"""The README runs as written: its Python example, its sandbox and its commands."""

from __future__ import annotations

from pathlib import Path

from tests.docs.conftest import ROOT, run_guide

# What `oncofed sandbox` prints, and the literal the guides show for it.
SANDBOX_PRINTS = {
    "127.0.0.1:33341": r"coordinator at (\S+?),",
    "/tmp/oncofed-sandbox-ai845aqg": r"Logs and node configs: (\S+?)\. ",
}


def test_readme(tmp_path: Path) -> None:
    guide = run_guide("README.md", tmp_path, learn=dict(SANDBOX_PRINTS))
    assert guide.ran >= 8
    # The two set-up commands are what CI runs itself: the test command is .ci/run's.
    shown = [block.text.removeprefix("$ ") for block in guide.not_run]
    assert shown == [
        'pip install -e ".[demo]" && oncofed demo',
        'pip install -e ".[test]" && pytest',
    ]
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith(shown[1])
