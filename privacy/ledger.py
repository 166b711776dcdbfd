"""The node's privacy ledger: every differentially private release, charged before it leaves.

One budget per (study, dataset) -- the permit id replaces the study id once
permits exist. A charge is one row holding the release's Rényi-DP curve and
the reply itself, written in one durable transaction (SQLite, synchronous
FULL) *before* the reply is handed to the network. Consequences:

- a refused or failed query writes nothing, so costs nothing;
- a message delivered twice (the coordinator re-sends after a crash or a
  reconnect) finds its row and gets the same stored reply back: the same
  release goes out again, never a fresh noisy sample, and is charged once;
- a node killed after the charge but before the reply is sent has paid for a
  release it will send, unchanged, when the message comes again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.engine import Connection
from sqlalchemy.pool import StaticPool

from oncofed.kernel.errors import NodeRefusal
from oncofed.privacy.accounting import PrivacyLoss
from oncofed.privacy.policy import DatasetPrivacy

LEDGER_FILE = "privacy-ledger.sqlite"

_metadata = MetaData()
charges = Table(
    "charges",
    _metadata,
    Column("message_id", String(128), primary_key=True),
    Column("study", String(128), nullable=False, index=True),
    Column("dataset", String(128), nullable=False, index=True),
    Column("task", String(64), nullable=False),
    Column("mechanism", String(128), nullable=False),
    Column("rdp", Text, nullable=False),
    Column("epsilon", Float, nullable=False),
    Column("delta", Float, nullable=False),
    Column("charged_at", Float, nullable=False),
    Column("reply", LargeBinary, nullable=False),
)
schema_version = Table("ledger_schema", _metadata, Column("version", Integer, primary_key=True))
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Budget:
    """A (study, dataset) budget at this node: its cap and what has been spent."""

    epsilon: float
    delta: float
    spent: PrivacyLoss

    @classmethod
    def of(cls, privacy: DatasetPrivacy, spent: PrivacyLoss) -> Budget:
        return cls(privacy.epsilon, privacy.delta, spent)

    @property
    def spent_epsilon(self) -> float:
        return self.spent.epsilon(self.delta)

    @property
    def remaining_epsilon(self) -> float:
        return max(0.0, self.epsilon - self.spent_epsilon)

    def allows(self, loss: PrivacyLoss) -> bool:
        # A relative tolerance: a request for exactly the remaining budget must pass.
        return (self.spent + loss).epsilon(self.delta) <= self.epsilon * (1 + 1e-9)


@dataclass(frozen=True)
class Charge:
    """One charged release, with the reply that was (or will be) sent for it."""

    message_id: str
    study: str
    dataset: str
    task: str
    mechanism: str
    epsilon: float
    delta: float
    charged_at: float
    reply: bytes


@dataclass(frozen=True)
class BudgetRow:
    study: str
    dataset: str
    releases: int
    spent_epsilon: float
    epsilon: float
    delta: float

    @property
    def remaining_epsilon(self) -> float:
        return max(0.0, self.epsilon - self.spent_epsilon)


def budget_exhausted(
    budget: Budget, loss: PrivacyLoss, *, study: str, dataset: str, node: str
) -> NodeRefusal:
    return NodeRefusal(
        f"the privacy budget of study {study!r} on dataset {dataset!r} is "
        f"{budget.epsilon:g} (delta {budget.delta:g}); {budget.spent_epsilon:.4g} is spent and "
        f"this release would cost {loss.epsilon(budget.delta):.4g} more",
        rule="privacy.budget",
        node=node,
        fix=(
            f"ask for at most epsilon {budget.remaining_epsilon:.4g}, or ask the data-access "
            "body and the node operator for a larger budget"
        ),
        remaining_epsilon=budget.remaining_epsilon,
    )


class PrivacyLedger:
    """Durable record of DP releases at one node."""

    def __init__(self, url: str, node: str) -> None:
        self.url = url
        in_memory = url in ("sqlite://", "sqlite:///:memory:")
        self._engine: Engine = create_engine(
            url,
            poolclass=StaticPool if in_memory else None,
            connect_args={"check_same_thread": False} if in_memory else {},
        )
        event.listen(self._engine, "connect", _sqlite_pragmas)
        self.node = node
        # SQLite serialises writers; the lock keeps check-then-charge atomic across threads.
        self._lock = threading.Lock()
        _metadata.create_all(self._engine)
        with self._engine.begin() as connection:
            if connection.execute(select(schema_version.c.version)).first() is None:
                connection.execute(insert(schema_version).values(version=SCHEMA_VERSION))

    def __reduce__(self) -> tuple[type[PrivacyLedger], tuple[str, str]]:
        # Flower's simulation ships node apps to worker processes by pickling: a copy
        # reopens the same ledger file (an in-memory ledger starts empty in that process).
        return (PrivacyLedger, (self.url, self.node))

    @classmethod
    def at(cls, state_dir: Path, node: str) -> PrivacyLedger:
        state_dir.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{state_dir / LEDGER_FILE}", node)

    @classmethod
    def in_memory(cls, node: str) -> PrivacyLedger:
        return cls("sqlite://", node)

    def close(self) -> None:
        self._engine.dispose()

    def spent(self, study: str, dataset: str) -> PrivacyLoss:
        with self._engine.connect() as connection:
            return _spent(connection, study, dataset)

    def budget(self, study: str, dataset: str, privacy: DatasetPrivacy) -> Budget:
        return Budget.of(privacy, self.spent(study, dataset))

    def stored_reply(self, message_id: str) -> bytes | None:
        """The reply already charged for this message, if it was charged."""
        with self._engine.connect() as connection:
            row = connection.execute(
                select(charges.c.reply).where(charges.c.message_id == message_id)
            ).first()
        return None if row is None else bytes(row.reply)

    def charge(
        self,
        *,
        message_id: str,
        study: str,
        dataset: str,
        task: str,
        mechanism: str,
        loss: PrivacyLoss,
        privacy: DatasetPrivacy,
        reply: bytes,
    ) -> bytes:
        """Write the charge and the reply durably, or refuse if the budget would be exceeded.

        Returns the reply on record: ``reply`` itself, or the reply an earlier
        delivery of the same message was charged for (which must go out instead).
        """
        with self._lock, self._transaction() as connection:
            earlier = connection.execute(
                select(charges.c.reply).where(charges.c.message_id == message_id)
            ).first()
            if earlier is not None:
                return bytes(earlier.reply)
            budget = Budget.of(privacy, _spent(connection, study, dataset))
            if not budget.allows(loss):
                raise budget_exhausted(budget, loss, study=study, dataset=dataset, node=self.node)
            connection.execute(
                insert(charges).values(
                    message_id=message_id,
                    study=study,
                    dataset=dataset,
                    task=task,
                    mechanism=mechanism,
                    rdp=json.dumps(loss.rdp),
                    epsilon=loss.epsilon(privacy.delta),
                    delta=privacy.delta,
                    charged_at=time.time(),
                    reply=reply,
                )
            )
        return reply

    def charges(self, study: str | None = None) -> list[Charge]:
        """Every charged release (of one study), oldest first."""
        query = select(*[c for c in charges.c if c.name != "rdp"]).order_by(charges.c.charged_at)
        if study is not None:
            query = query.where(charges.c.study == study)
        with self._engine.connect() as connection:
            return [
                Charge(**{**row._asdict(), "reply": bytes(row.reply)})
                for row in connection.execute(query)
            ]

    def summary(self, privacy_for: dict[str, DatasetPrivacy]) -> list[BudgetRow]:
        """Spent and remaining per (study, dataset), at each dataset's policy delta."""
        with self._engine.connect() as connection:
            keys = connection.execute(
                select(charges.c.study, charges.c.dataset).distinct().order_by("study", "dataset")
            ).all()
            rows = []
            for study, dataset in keys:
                privacy = privacy_for.get(dataset, DatasetPrivacy())
                releases = len(
                    connection.execute(
                        select(charges.c.message_id).where(
                            charges.c.study == study, charges.c.dataset == dataset
                        )
                    ).all()
                )
                spent = _spent(connection, study, dataset)
                rows.append(
                    BudgetRow(
                        study,
                        dataset,
                        releases,
                        spent.epsilon(privacy.delta),
                        privacy.epsilon,
                        privacy.delta,
                    )
                )
        return rows

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with self._engine.connect() as connection:
            # IMMEDIATE takes the write lock at once, so a second node process on the same
            # ledger file cannot read the same spent total and both charge past the cap.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.exec_driver_sql("ROLLBACK")
                raise
            connection.exec_driver_sql("COMMIT")


def _spent(connection: Connection, study: str, dataset: str) -> PrivacyLoss:
    total = [0.0] * len(PrivacyLoss.zero().rdp)
    for (rdp,) in connection.execute(
        select(charges.c.rdp).where(charges.c.study == study, charges.c.dataset == dataset)
    ):
        for i, eps in enumerate(json.loads(rdp)):
            total[i] += eps
    return PrivacyLoss(tuple(total))


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()
    # Let our explicit BEGIN IMMEDIATE control transactions instead of pysqlite's implicit ones.
    dbapi_connection.isolation_level = None  # type: ignore[attr-defined]


__all__ = ["LEDGER_FILE", "Budget", "BudgetRow", "Charge", "PrivacyLedger", "budget_exhausted"]
