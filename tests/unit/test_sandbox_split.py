"""How a sandbox turns a split column into node names."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from oncofed.client.sandbox import Sandbox
from oncofed.kernel.errors import ConfigError, ExitCode
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
    with pytest.raises(ConfigError) as caught:
        Sandbox.from_frame(frame, split_by="site")
    assert caught.value.rule == "sandbox.split_by"


def test_missing_split_values_and_unknown_columns_are_refused() -> None:
    frame = pd.DataFrame({"site": ["a", None], "x": [1, 2]})
    with pytest.raises(ConfigError, match="no 'site'"):
        Sandbox.from_frame(frame, split_by="site")
    with pytest.raises(ConfigError, match="not in the frame") as caught:
        Sandbox.from_frame(frame, split_by="centre")
    # The caller's choice, not a failure of the sandbox: a config exit code, not INTERNAL.
    assert caught.value.exit_code == ExitCode.CONFIG
    assert caught.value.fix == "split by one of: x (2 nodes)"
    with pytest.raises(ConfigError) as caught:
        Sandbox.from_frame(pd.DataFrame({"x": [1, 1]}), split_by="centre")
    assert "add a column naming each row's centre" in caught.value.fix


def test_an_unknown_split_column_is_refused_naming_the_columns_that_would_do() -> None:
    frame = pd.DataFrame(
        {
            "id": range(40),  # a node per row is not offered
            "centre": ["a", "b", "c", "d"] * 10,
            "sex": [1, 2] * 20,
            "ecog": [0.0, None] * 20,  # missing values
            "cohort": ["x"] * 40,  # one node is no federation
        }
    )
    with pytest.raises(ConfigError) as caught:
        Sandbox.from_frame(frame, split_by="inst")
    assert caught.value.rule == "sandbox.split_by"
    assert caught.value.fix == "split by one of: centre (4 nodes), sex (2 nodes)"


def test_a_dataset_name_nodes_would_refuse_is_refused_before_any_process() -> None:
    frame = pd.DataFrame({"site": ["a", "b"], "x": [1, 2]})
    with pytest.raises(ConfigError) as caught:
        Sandbox.from_frame(frame, split_by="site", dataset="lung cancer")
    assert caught.value.rule == "sandbox.dataset"
