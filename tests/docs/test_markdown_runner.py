"""The guide runner itself: what counts as a match, and that every shown command is run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs.conftest import ROOT
from tests.docs.markdown import Guide, OutputMismatch, blocks, matches


def test_literal_lines_must_match_exactly() -> None:
    assert matches("a  1\nb  2", "a  1\nb  2  \n")
    assert not matches("a  1\nb  2", "a  1\nb  3")
    assert not matches("a  1", "a  1\nextra")


def test_an_ellipsis_line_matches_any_number_of_lines() -> None:
    assert matches("first\n...\nlast", "first\nlast")
    assert matches("first\n...\nlast", "first\nx\ny\nlast")
    assert not matches("first\n...\nlast", "first\nx\nnot last")


def test_an_ellipsis_inside_a_line_matches_any_text() -> None:
    assert matches("took ... s", "took 46.0 s")
    assert not matches("took ... s", "took 46.0 ms!")


def test_a_guide_whose_output_is_wrong_fails(tmp_path: Path) -> None:
    guide = tmp_path / "guide.md"
    guide.write_text(
        "```python\nprint(6 * 7)\n```\n\n```\n42\n```\n\n```console\n$ echo $((6 * 7))\n41\n```\n"
    )
    with pytest.raises(OutputMismatch, match=r"guide\.md:9"):
        Guide(guide, cwd=tmp_path).run()


def test_exports_and_exit_codes_carry_over_between_commands(tmp_path: Path) -> None:
    guide = tmp_path / "guide.md"
    guide.write_text(
        "```console\n$ export ONCOFED_X=seven\n$ echo $ONCOFED_X\nseven\n"
        "$ false\n$ echo $?\n1\n```\n"
    )
    assert Guide(guide, cwd=tmp_path).run() is None


def test_python_blocks_share_a_namespace_and_own_the_output_after_them(tmp_path: Path) -> None:
    guide = tmp_path / "guide.md"
    guide.write_text(
        "```python\nx = 2\n```\n\ntext\n\n```python\nprint(x + 1)\n```\n\n```\n3\n```\n"
    )
    found = blocks(guide)
    assert [b.lang for b in found] == ["python", "python"]
    assert found[1].output is not None and found[1].output.text == "3"
    Guide(guide, cwd=tmp_path).run()


def test_every_command_shown_in_a_guide_is_run_or_marked() -> None:
    """A block a reader would type into a terminal is a ``console`` block (run, or ``notest``)."""
    guides = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    unmarked = [
        block.where
        for guide in guides
        for block in blocks(guide)
        if block.lang in ("", "bash", "sh", "shell")
        and block.text.lstrip().startswith(("$ ", "oncofed ", "pip ", "python ", "export "))
    ]
    assert not unmarked, f"blocks a reader runs but no test does: {unmarked}"


def test_every_guide_with_runnable_blocks_has_a_test() -> None:
    guides = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    tests = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    untested = [
        str(guide.relative_to(ROOT))
        for guide in guides
        if any(block.runs for block in blocks(guide))
        and f'"{guide.relative_to(ROOT)}"' not in tests
    ]
    assert not untested, f"guides whose code no test runs: {untested}"
