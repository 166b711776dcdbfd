"""How a sandbox turns a split column into node names."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from oncofed.client.sandbox import Sandbox
from oncofed.kernel.errors import SandboxError
from oncofed.kernel.schema import NAME_PATTERN


def test_every_value_becomes_a_valid_distinct_node_name() -> None:
    frame = pd.DataFrame({"site": [1.0, 2.0, 2.0, 11.0], "x": [1, 2, 3, 4]})
    net = Sandbox.from_frame(frame, split_by="site", keep=False)
    try:
        assert net.node_names == ["site-1", "site-2", "site-11"]
        assert all(re.match(NAME_PATTERN, name) for name in net.node_names)
        assert [len(p) for p in net.partitions.values()] == [1, 2, 1]
    finally:
        net.stop()


def test_values_that_collide_after_cleaning_are_refused() -> None:
    frame = pd.DataFrame({"site": ["a b", "a/b"], "x": [1, 2]})
    with pytest.raises(SandboxError) as caught:
        Sandbox.from_frame(frame, split_by="site")
    assert caught.value.rule == "sandbox.split_by"


def test_missing_split_values_and_unknown_columns_are_refused() -> None:
    frame = pd.DataFrame({"site": ["a", None], "x": [1, 2]})
    with pytest.raises(SandboxError, match="no 'site'"):
        Sandbox.from_frame(frame, split_by="site")
    with pytest.raises(SandboxError, match="not in the frame"):
        Sandbox.from_frame(frame, split_by="centre")
