"""The node's one configuration file (TOML), validated by pydantic.

Example::

    name = "centre-a"
    coordinator = "coordinator.example.org:7100"

    [datasets.lung]
    path = "data/lung.parquet"

    [datasets.lung.columns]
    age = "float"
    sex = { type = "category", categories = ["1", "2"] }
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from oncofed.governance.keys import parse_public_key
from oncofed.kernel.errors import ConfigError, UnknownTask, format_validation_error
from oncofed.kernel.schema import NAME_PATTERN, ColumnSpec, DatasetSchema
from oncofed.privacy.policy import NodePolicy
from oncofed.tasks import check_installed


class DatasetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path
    format: Literal["csv", "parquet"] | None = Field(
        default=None, description="Defaults to the file's suffix."
    )
    columns: dict[str, ColumnSpec] = Field(min_length=1)
    allowed_tasks: tuple[str, ...] | None = Field(
        default=None,
        description="Task types this node runs on the dataset (None: every installed task); "
        "a permit can narrow this, never widen it.",
    )
    approval: Literal["automatic", "manual"] = Field(
        default="automatic",
        description="manual: each task waits for `oncofed node approvals approve`.",
    )

    @field_validator("allowed_tasks")
    @classmethod
    def _installed(cls, tasks: tuple[str, ...] | None) -> tuple[str, ...] | None:
        try:
            # Only the detail survives: pydantic reports it under config.schema.
            check_installed(tasks or (), rule="config.schema")
        except UnknownTask as exc:
            raise ValueError(exc.detail) from None
        return tasks

    @property
    def dataset_schema(self) -> DatasetSchema:
        return DatasetSchema(columns=self.columns)

    @property
    def file_format(self) -> Literal["csv", "parquet"]:
        if self.format is not None:
            return self.format
        return "parquet" if self.path.suffix.lower() in (".parquet", ".pq") else "csv"


class SecureAggregationConfig(BaseModel):
    """Peers this node masks sums with, each pinned by its Ed25519 identity key."""

    model_config = ConfigDict(extra="forbid")

    peers: dict[str, str] = Field(
        min_length=1,
        description="Node name -> base64 public identity key (`oncofed node identity`).",
    )

    @field_validator("peers")
    @classmethod
    def _keys(cls, peers: dict[str, str]) -> dict[str, str]:
        for name, text in peers.items():
            try:
                parse_public_key(text)
            except ValueError as exc:
                raise ValueError(f"peer {name!r}: {exc}") from None
        return peers


class GovernanceConfig(BaseModel):
    """Whom this node trusts to grant access, and how strictly it reads time."""

    model_config = ConfigDict(extra="forbid")

    trusted_bodies: dict[str, str] = Field(
        min_length=1,
        description="Data-access body name -> base64 Ed25519 public key (its card's signing_key).",
    )
    max_clock_skew_seconds: float = Field(
        default=300.0, ge=0, le=3600, description="How far a task's time may be in the future."
    )
    max_task_age_hours: float = Field(
        default=24.0,
        gt=0,
        description="How old a signed task may be when its first message arrives.",
    )
    max_run_hours: float = Field(
        default=72.0,
        gt=0,
        description="How long after its first message a task may keep sending messages.",
    )
    audit_retention_days: int = Field(
        default=366, ge=366, description="Audit entries are kept at least this long (EHDS Art. 73)."
    )

    @field_validator("trusted_bodies")
    @classmethod
    def _keys(cls, bodies: dict[str, str]) -> dict[str, str]:
        for name, text in bodies.items():
            try:
                parse_public_key(text)
            except ValueError as exc:
                raise ValueError(f"trusted body {name!r}: {exc}") from None
        return bodies


class NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="This centre's node name.")
    coordinator: str = Field(
        pattern=r"^[^\s:]+:\d{1,5}$", description="host:port of the coordinator."
    )
    state_dir: Path = Field(default=Path("state"), description="Audit log and local state.")
    credentials: Path = Field(
        description="Folder with this node's ca.crt, tls.crt and tls.key (`oncofed pki request`)."
    )
    governance: GovernanceConfig
    heartbeat_seconds: float = Field(default=5.0, gt=0, le=300)
    max_workers: int = Field(default=2, ge=1, le=32, description="Tasks computed at once.")
    datasets: dict[str, DatasetConfig] = Field(min_length=1)
    policy: NodePolicy = Field(default_factory=NodePolicy, description="What may leave.")
    secure_aggregation: SecureAggregationConfig | None = Field(
        default=None, description="Pinned peer keys; without them the node refuses masked sums."
    )

    @field_validator("datasets")
    @classmethod
    def _dataset_names(cls, datasets: dict[str, DatasetConfig]) -> dict[str, DatasetConfig]:
        bad = [name for name in datasets if not re.match(NAME_PATTERN, name)]
        if bad:
            raise ValueError(
                f"dataset name(s) {bad} must be letters, digits, '_', '.' or '-' (at most 64)"
            )
        return datasets

    def resolve(self, base: Path) -> NodeConfig:
        """Paths in the file are relative to the file itself."""
        datasets = {
            name: ds.model_copy(update={"path": (base / ds.path).resolve()})
            for name, ds in self.datasets.items()
        }
        return self.model_copy(
            update={
                "datasets": datasets,
                "state_dir": (base / self.state_dir).resolve(),
                "credentials": (base / self.credentials).resolve(),
            }
        )


def load_node_config(path: Path) -> NodeConfig:
    """Read and validate a node config; every problem becomes one ConfigError line."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"node config {str(path)!r} does not exist",
            rule="config.file",
            fix="pass the path of the node's TOML file",
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"node config {str(path)!r} is not valid TOML: {exc}",
            rule="config.toml",
            fix="correct the TOML syntax at the position shown",
        ) from None
    try:
        config = NodeConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            f"node config {str(path)!r} is invalid: {format_validation_error(exc)}",
            rule="config.schema",
            fix="see docs/operators.md for every setting",
        ) from None
    return config.resolve(path.resolve().parent)


__all__ = [
    "DatasetConfig",
    "GovernanceConfig",
    "NodeConfig",
    "SecureAggregationConfig",
    "load_node_config",
]
