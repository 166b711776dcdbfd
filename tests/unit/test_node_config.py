"""Node configuration and local data: every mistake becomes one typed, named error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from oncofed.kernel.errors import ConfigError, DataError, ExitCode
from oncofed.node.config import load_node_config
from oncofed.node.data import Catalogue, read_dataset

GOOD = """
name = "centre-a"
coordinator = "127.0.0.1:7100"
credentials = "credentials"

[governance]
trusted_bodies = { "hdab-example" = "gYPvdaGHV0zvQMVNCqaM4CqMXiWqwpzgk+F9v0XtsO0=" }

[datasets.lung]
path = "lung.csv"

[datasets.lung.columns]
age = "integer"
"wt.loss" = "float"
sex = { type = "category", categories = ["1", "2"] }
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    pd.DataFrame(
        {"age": [60, 71, 55], "wt.loss": [1.5, None, 3.0], "sex": [1, 2, 1], "secret": [9, 9, 9]}
    ).to_csv(tmp_path / "lung.csv", index=False)
    (tmp_path / "node.toml").write_text(GOOD)
    return tmp_path


def test_good_config_resolves_paths_next_to_the_file(site: Path) -> None:
    config = load_node_config(site / "node.toml")
    assert config.datasets["lung"].path == (site / "lung.csv").resolve()
    assert config.state_dir == (site / "state").resolve()
    frame = read_dataset("lung", config.datasets["lung"], config.name)
    assert list(frame.columns) == ["age", "wt.loss", "sex"]  # undeclared 'secret' never read
    assert frame["wt.loss"].isna().sum() == 1
    assert frame["sex"].tolist() == ["1", "2", "1"]


@pytest.mark.parametrize(
    ("text", "rule", "fragment"),
    [
        ("name = 'a'\ncoordinator = ", "config.toml", "not valid TOML"),
        (GOOD.replace('name = "centre-a"', 'name = "bad name!"'), "config.schema", "name"),
        (GOOD + "\nfavourite_colour = 'blue'\n", "config.schema", "favourite_colour"),
        (GOOD.replace('"integer"', '"integr"'), "config.schema", "datasets.lung.columns.age"),
        (GOOD.replace("127.0.0.1:7100", "nowhere"), "config.schema", "coordinator"),
        (
            GOOD.replace("datasets.lung", 'datasets."lung cancer"'),
            "config.schema",
            "dataset name",
        ),
    ],
)
def test_bad_config_names_the_problem(site: Path, text: str, rule: str, fragment: str) -> None:
    (site / "node.toml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_node_config(site / "node.toml")
    assert caught.value.rule == rule
    assert fragment in str(caught.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_node_config(tmp_path / "absent.toml")
    assert caught.value.rule == "config.file"


def test_data_errors_name_file_and_column(site: Path) -> None:
    config = load_node_config(site / "node.toml").datasets["lung"]
    missing_column = config.model_copy(
        update={"columns": {**config.columns, "ecog": config.columns["age"]}}
    )
    with pytest.raises(DataError) as caught:
        read_dataset("lung", missing_column, "centre-a")
    assert caught.value.rule == "data.column_missing"
    assert "ecog" in str(caught.value) and caught.value.node == "centre-a"

    pd.DataFrame({"age": ["sixty"], "wt.loss": [1.0], "sex": [1]}).to_csv(
        site / "lung.csv", index=False
    )
    with pytest.raises(DataError) as caught:
        read_dataset("lung", config, "centre-a")
    assert caught.value.rule in ("data.read", "data.column_type")
    assert "age" in str(caught.value) or "sixty" in str(caught.value)

    (site / "lung.csv").unlink()
    with pytest.raises(DataError) as caught:
        read_dataset("lung", config, "centre-a")
    assert caught.value.rule == "data.file"


def test_catalogue_rereads_a_changed_file(site: Path) -> None:
    config = load_node_config(site / "node.toml")
    catalogue = Catalogue(config.name, config.datasets)
    assert len(catalogue.load("lung").frame) == 3
    pd.DataFrame({"age": [1], "wt.loss": [2.0], "sex": [1]}).to_csv(site / "lung.csv", index=False)
    import os

    os.utime(site / "lung.csv", ns=(1, 10**18))
    assert len(catalogue.load("lung").frame) == 1


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oncofed", *args], capture_output=True, text=True, timeout=60
    )


def test_node_check_prints_schema_and_rows_and_exits_with_documented_codes(site: Path) -> None:
    from oncofed.governance.pki import init_network, issue, request

    # `node check` checks the credentials too (tests/integration/test_node_cli.py).
    init_network(site / "ca", "test-net")
    issue(site / "ca", request(site / "credentials", "node", "centre-a"))
    ok = _cli("node", "check", str(site / "node.toml"))
    assert ok.returncode == ExitCode.OK, ok.stderr
    assert "3 rows" in ok.stdout and "wt.loss" in ok.stdout and "float" in ok.stdout

    (site / "node.toml").write_text(GOOD + "\nunknown = 1\n")
    bad_config = _cli("node", "check", str(site / "node.toml"))
    assert bad_config.returncode == ExitCode.CONFIG
    assert "unknown" in bad_config.stderr and "Traceback" not in bad_config.stderr

    (site / "node.toml").write_text(GOOD)
    (site / "lung.csv").unlink()
    bad_data = _cli("node", "check", str(site / "node.toml"))
    assert bad_data.returncode == ExitCode.DATA
    assert "lung.csv" in bad_data.stderr and "Traceback" not in bad_data.stderr
    assert len(bad_data.stderr.strip().splitlines()) <= 3


def test_policy_section_defaults_safe_and_rejects_unknown_knobs(site: Path) -> None:
    assert load_node_config(site / "node.toml").policy.exact_event_times is False
    (site / "node.toml").write_text(GOOD + "\n[policy]\nexact_event_times = true\n")
    assert load_node_config(site / "node.toml").policy.exact_event_times is True
    (site / "node.toml").write_text(GOOD + "\n[policy]\nexact_times = true\n")
    with pytest.raises(ConfigError) as caught:
        load_node_config(site / "node.toml")
    assert "policy.exact_times" in str(caught.value)


def test_the_deploy_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "node.toml"
    config = load_node_config(example)
    assert config.datasets["lung"].columns["sex"].categories == ("1", "2")
    assert config.policy.exact_event_times is False
