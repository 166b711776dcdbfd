"""Reading a node's local datasets, checked against their declared schema.

Files are read with pyarrow; declared types are enforced on read, so a task
handler always sees the columns and types the node declared -- never a column
the operator did not list.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from oncofed.kernel.errors import DataError, QueryError
from oncofed.kernel.schema import ColumnSpec, DatasetSchema
from oncofed.node.config import DatasetConfig
from oncofed.privacy.ledger import PrivacyLedger
from oncofed.privacy.policy import NodePolicy
from oncofed.tasks.base import LocalDataset

ARROW_TYPES: dict[str, pa.DataType] = {
    "float": pa.float64(),
    "integer": pa.int64(),
    "boolean": pa.bool_(),
    "category": pa.string(),
    "string": pa.string(),
}


def read_dataset(name: str, config: DatasetConfig, node: str = "") -> pd.DataFrame:
    """The declared columns of one dataset, cast to their declared types."""
    path = config.path
    if not path.is_file():
        raise DataError(
            f"dataset {name!r}: file {str(path)!r} does not exist",
            rule="data.file",
            node=node,
            fix=f"correct [datasets.{name}] path in the node config",
        )
    wanted = list(config.columns)
    try:
        if config.file_format == "parquet":
            available = pq.read_schema(path).names
            _check_present(name, wanted, available, str(path), node)
            table = pq.read_table(path, columns=wanted)
        else:
            available = _csv_header(path)
            _check_present(name, wanted, available, str(path), node)
            table = pacsv.read_csv(
                path,
                convert_options=pacsv.ConvertOptions(
                    include_columns=wanted,
                    column_types={c: ARROW_TYPES[s.type] for c, s in config.columns.items()},
                    strings_can_be_null=True,
                ),
            )
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise DataError(
            f"dataset {name!r}: cannot read {str(path)!r}: {exc}",
            rule="data.read",
            node=node,
            fix="check the file format and that each column's values match its declared type",
        ) from None
    return _cast(name, table, config.columns, str(path), node)


def _csv_header(path: object) -> list[str]:
    reader = pacsv.open_csv(path)
    return list(reader.schema.names)


def _check_present(
    name: str, wanted: list[str], available: list[str], path: str, node: str
) -> None:
    missing = [c for c in wanted if c not in available]
    if missing:
        raise DataError(
            f"dataset {name!r}: column(s) {missing} declared but not in {path!r}",
            rule="data.column_missing",
            node=node,
            fix=f"add the column(s) to the file or remove them from [datasets.{name}.columns]",
        )


def _cast(
    name: str, table: pa.Table, columns: Mapping[str, ColumnSpec], path: str, node: str
) -> pd.DataFrame:
    arrays = []
    for column, spec in columns.items():
        try:
            arrays.append(table[column].cast(ARROW_TYPES[spec.type]))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise DataError(
                f"dataset {name!r}: column {column!r} in {path!r} is not {spec.type}: {exc}",
                rule="data.column_type",
                node=node,
                fix=f"fix the values or declare {column!r} with its real type",
            ) from None
    typed = pa.table(arrays, names=list(columns))
    frame: pd.DataFrame = typed.to_pandas(types_mapper=_pandas_type)
    return frame


def _pandas_type(arrow_type: pa.DataType) -> object:
    # Nullable pandas dtypes keep integers integral and missing values explicit.
    if pa.types.is_integer(arrow_type):
        return pd.Int64Dtype()
    if pa.types.is_boolean(arrow_type):
        return pd.BooleanDtype()
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return pd.StringDtype()
    return None


@dataclass
class _Cached:
    mtime_ns: int
    frame: pd.DataFrame


class _NodeCatalogue:
    """What both catalogues share: the node's name, its policy and its privacy ledger."""

    def __init__(
        self, node_name: str, policy: NodePolicy | None, ledger: PrivacyLedger | None
    ) -> None:
        self._node_name = node_name
        self._policy = policy or NodePolicy()
        # Without a state directory (checks, simulations) the ledger lives in memory.
        self._ledger = ledger or PrivacyLedger.in_memory(node_name)

    @property
    def node_name(self) -> str:
        return self._node_name

    @property
    def policy(self) -> NodePolicy:
        return self._policy

    @property
    def ledger(self) -> PrivacyLedger:
        return self._ledger


class Catalogue(_NodeCatalogue):
    """The datasets a node offers, read on first use and re-read when the file changes."""

    def __init__(
        self,
        node_name: str,
        datasets: Mapping[str, DatasetConfig],
        policy: NodePolicy | None = None,
        ledger: PrivacyLedger | None = None,
    ) -> None:
        super().__init__(node_name, policy, ledger)
        self._datasets = dict(datasets)
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return sorted(self._datasets)

    def schema(self, dataset: str) -> DatasetSchema | None:
        config = self._datasets.get(dataset)
        return config.dataset_schema if config is not None else None

    def schemas(self) -> dict[str, DatasetSchema]:
        return {name: cfg.dataset_schema for name, cfg in self._datasets.items()}

    def load(self, dataset: str) -> LocalDataset:
        config = self._datasets.get(dataset)
        if config is None:
            raise QueryError(
                f"dataset {dataset!r} is not offered by this node",
                rule="node.dataset_offered",
                node=self._node_name,
                fix=f"use one of: {', '.join(self.names)}",
            )
        try:
            mtime = config.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = -1
        with self._lock:
            cached = self._cache.get(dataset)
            if cached is None or cached.mtime_ns != mtime:
                frame = read_dataset(dataset, config, self._node_name)
                cached = self._cache[dataset] = _Cached(mtime, frame)
        return LocalDataset(
            self._node_name, dataset, config.dataset_schema, cached.frame, self._policy
        )


class FrameCatalogue(_NodeCatalogue):
    """In-memory datasets: the node side of Flower simulations and tests."""

    def __init__(
        self,
        node_name: str,
        frames: Mapping[str, tuple[DatasetSchema, pd.DataFrame]],
        policy: NodePolicy | None = None,
        ledger: PrivacyLedger | None = None,
    ) -> None:
        super().__init__(node_name, policy, ledger)
        self._frames = dict(frames)

    def schema(self, dataset: str) -> DatasetSchema | None:
        entry = self._frames.get(dataset)
        return entry[0] if entry is not None else None

    def load(self, dataset: str) -> LocalDataset:
        if dataset not in self._frames:
            raise QueryError(
                f"dataset {dataset!r} is not offered by this node",
                rule="node.dataset_offered",
                node=self._node_name,
                fix=f"use one of: {', '.join(sorted(self._frames))}",
            )
        schema, frame = self._frames[dataset]
        return LocalDataset(self._node_name, dataset, schema, frame, self._policy)


__all__ = ["Catalogue", "FrameCatalogue", "read_dataset"]
