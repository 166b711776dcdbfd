"""The networks the guides run against, shared by every guide that needs one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from oncofed.client.demo import lung_centres
from oncofed.client.sandbox import Sandbox
from tests.docs.markdown import Guide

ROOT = Path(__file__).resolve().parents[2]
# ONCOFED_DOCS_UPDATE=1 writes what the blocks printed into the guides, for review as a diff.
UPDATE = os.environ.get("ONCOFED_DOCS_UPDATE") == "1"


def run_guide(
    name: str,
    cwd: Path,
    *,
    values: dict[str, str] | None = None,
    learn: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> Guide:
    """Run the guide ``name`` (relative to the repository) in ``cwd``, top to bottom.

    ``values``: guide literal -> its value in this run (an address, a folder);
    ``learn``: guide literal -> regex whose group 1 in a command's output is its value;
    ``env``: environment variables for the guide's shell commands.
    """
    guide = Guide(
        ROOT / name,
        cwd=cwd,
        values=values or {},
        learn=learn or {},
        env=env or {},
        update=UPDATE,
    )
    guide.run()
    return guide


def guide_reader(
    net: Sandbox,
    reader: str,
    permit: str,
    *,
    address: str = "coord.example.org:7100",
    credentials: str = "~/.oncofed/ada",
) -> dict[str, str]:
    """Put a researcher of the guide's own in its reader's place on a shared network.

    Each node caps a researcher's privacy loss over every permit, so each guide's
    reader has their own; returns the ``values`` for the guide's address and folder.
    """
    net.enrol(reader, "researcher")
    net.grant(permit, persons=[reader])
    return {address: net.address, credentials: str(net.credentials(reader))}


@pytest.fixture(scope="package")
def lung_four_centres() -> Iterator[Sandbox]:
    """The lung data in four centres (as ``lung_centres(4)``), nodes allowing exact answers
    under the default policy otherwise; guides grant their own permit ids on it."""
    with Sandbox.from_frame(
        lung_centres(4), split_by="centre", dataset="lung", release="exact"
    ) as net:
        yield net


@pytest.fixture(scope="package")
def gbsg_three_centres(gbsg2: pd.DataFrame) -> Iterator[Sandbox]:
    """GBSG2 (686 patients) in three centres gbsg-a, gbsg-b, gbsg-c, exact answers allowed."""
    with Sandbox.from_frame(gbsg2, split_by="centre", dataset="gbsg2", release="exact") as net:
        yield net
