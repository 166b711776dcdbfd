"""docs/analyses/tables.md runs as written against the lung and GBSG2 networks."""

from __future__ import annotations

from pathlib import Path

from oncofed.client.sandbox import Sandbox
from tests.docs.conftest import guide_reader, run_guide

# The guide's reader, with a privacy budget of their own at each node: the package's
# guides share the networks, and each node caps a researcher over every permit.
READER = "tables-reader"


def test_tables_guide(
    tmp_path: Path, lung_four_centres: Sandbox, gbsg_three_centres: Sandbox
) -> None:
    values = guide_reader(lung_four_centres, READER, "lung-tables-2026")
    values |= guide_reader(
        gbsg_three_centres,
        READER,
        "gbsg2-tables-2026",
        address="breast.example.org:7100",
        credentials="~/.oncofed/ada-breast",
    )
    guide = run_guide("docs/analyses/tables.md", tmp_path, values=values)
    assert guide.ran >= 20
    assert not guide.not_run
    assert (tmp_path / "age.png").stat().st_size > 0
