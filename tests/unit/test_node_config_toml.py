"""The node config files oncofed writes (sandbox, tests) load back to what was written."""

from __future__ import annotations

import tomllib
from pathlib import Path

from oncofed.client.sandbox import node_config_toml
from oncofed.governance.keys import Identity
from oncofed.kernel.schema import ColumnSpec, DatasetSchema
from oncofed.node.config import load_node_config
from oncofed.privacy.policy import NodePolicy

AWKWARD = 'say "hi" \\ then\na new line'


def test_a_written_node_config_loads_back_to_the_same_values(tmp_path: Path) -> None:
    data_file = tmp_path / f"centre {AWKWARD}.csv"
    schema = DatasetSchema(
        columns={
            AWKWARD: ColumnSpec(type="float", bounds=(0.0, 1.5), description=AWKWARD),
            "sex": ColumnSpec(type="category", categories=("1", AWKWARD)),
            "age": ColumnSpec(type="integer"),  # categories and bounds left None
        }
    )
    body = Identity.generate("hdab", "hdab").card.signing_key
    peer = Identity.generate("centre-b", "node").card.signing_key
    policy = NodePolicy(min_nodes=1, exact_event_times=True)
    text = node_config_toml(
        "centre-a",
        "127.0.0.1:7100",
        "lung",
        data_file,
        schema,
        0.5,
        policy,
        {"centre-b": peer},
        credentials=tmp_path / "creds",
        trusted_bodies={"hdab": body},
        allowed_tasks=None,  # an optional setting left None: written as nothing, not `null`
    )
    assert "null" not in text and "None" not in text
    (tmp_path / "node.toml").write_text(text, encoding="utf-8")

    config = load_node_config(tmp_path / "node.toml")
    lung = config.datasets["lung"]
    assert lung.path == data_file and lung.path.name == f"centre {AWKWARD}.csv"
    assert lung.columns == schema.columns
    assert lung.columns[AWKWARD].description == AWKWARD
    assert lung.allowed_tasks is None and lung.approval == "automatic"
    assert config.policy == policy
    assert config.credentials == tmp_path / "creds"
    assert config.heartbeat_seconds == 0.5
    assert config.governance.trusted_bodies == {"hdab": body}
    assert config.secure_aggregation is not None
    assert config.secure_aggregation.peers == {"centre-b": peer}


def test_no_peers_means_no_secure_aggregation_section(tmp_path: Path) -> None:
    text = node_config_toml(
        "centre-a",
        "127.0.0.1:7100",
        "lung",
        tmp_path / "lung.csv",
        DatasetSchema(columns={"age": ColumnSpec(type="integer")}),
        1.0,
        NodePolicy(),
        None,
        credentials=tmp_path,
        trusted_bodies={"hdab": Identity.generate("hdab", "hdab").card.signing_key},
        allowed_tasks=["describe"],
    )
    raw = tomllib.loads(text)
    assert "secure_aggregation" not in raw
    assert raw["datasets"]["lung"]["allowed_tasks"] == ["describe"]
