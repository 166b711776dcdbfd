"""docs/researchers.md runs as written against four lung cancer centres."""

from __future__ import annotations

from pathlib import Path

from oncofed.client.sandbox import Sandbox
from tests.docs.conftest import run_guide


def test_researchers_guide(tmp_path: Path, lung_four_centres: Sandbox) -> None:
    net = lung_four_centres
    net.grant("lung-survival-2026")
    guide = run_guide(
        "docs/researchers.md",
        tmp_path,
        values={
            "coord.example.org:7100": net.address,
            "~/.oncofed/ada": str(net.credentials(net.researcher)),
        },
        learn={"4e58427dddd346cbbf62e04e0f21dfcc": r"^([0-9a-f]{32})$"},
    )
    assert guide.ran >= 10
    assert not guide.not_run
