"""docs/training.md runs as written: DP-SGD and an MLP on breast cancer data, a Cox-MLP on GBSG2.

The guide starts its own sandboxes (4 tumour centres, then 3 GBSG2 centres),
as its reader would; the test only makes sure none outlives a failing run.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oncofed.client.sandbox import Sandbox
from oncofed.client.session import Session
from tests.docs.conftest import ROOT, run_guide

pytest.importorskip("torch")
pytest.importorskip("opacus")
pytest.importorskip("sklearn")
pytest.importorskip("lifelines")

GUIDE = "docs/training.md"
# The folder of the guide's first sandbox, which it prints: the operator's command uses it.
SANDBOX_FOLDER = {"/tmp/oncofed-sandbox-3k9d2x1q": r"^(\S+)/centre-0/node\.toml$"}


@pytest.fixture
def sandboxes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Sandbox]]:
    """Every sandbox the guide starts; stopped afterwards if the guide stopped short."""
    started: list[Sandbox] = []
    start = Sandbox.start

    def recorded(self: Sandbox) -> None:
        started.append(self)
        start(self)

    monkeypatch.setattr(Sandbox, "start", recorded)
    yield started
    for net in started:
        net.stop()  # a no-op for a sandbox the guide stopped itself


@pytest.mark.slow
def test_training_guide(tmp_path: Path, sandboxes: list[Sandbox]) -> None:
    guide = run_guide(GUIDE, tmp_path, learn=dict(SANDBOX_FOLDER))
    assert guide.ran >= 10
    assert not guide.not_run
    assert len(sandboxes) == 2


def _table(markdown: str, heading: str) -> list[list[str]]:
    """The cells of the first table under ``heading``, header and rule left out."""
    section = markdown.split(f"\n{heading}\n", 1)[1].lstrip("\n")
    rows = section.split("\n\n", 1)[0].splitlines()
    assert rows and all(row.startswith("|") for row in rows), f"no table under {heading}"
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows[2:]]


def test_the_parameters_table_is_session_trains_signature() -> None:
    """Every parameter ``Session.train`` takes is listed once, with its default."""
    signature = inspect.signature(Session.train).parameters
    taken = {name: p.default for name, p in signature.items() if name != "self"}
    listed: dict[str, Any] = {}
    for names_cell, default_cell, _meaning in _table((ROOT / GUIDE).read_text(), "## Parameters"):
        names = re.findall(r"`(\w+)`", names_cell)
        if default_cell == "—":  # required, or required by the model chosen
            defaults: list[str] = ["—"] * len(names)
        else:
            defaults = default_cell.split(", ")
        assert len(defaults) == len(names), (names_cell, default_cell)
        for name, default in zip(names, defaults, strict=True):
            assert name not in listed, f"{name} listed twice"
            listed[name] = default
    assert sorted(listed) == sorted(taken)
    for name, shown in listed.items():
        actual = taken[name]
        if shown == "—":
            assert actual in (inspect.Parameter.empty, None), name
        elif shown not in ("per model", "the session's"):
            assert ast.literal_eval(shown.strip("`")) == actual, (name, shown, actual)
        else:
            assert actual is None, name
