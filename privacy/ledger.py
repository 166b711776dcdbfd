"""The node's privacy ledger: every differentially private release, charged before it leaves.

Two budgets hold for every release: one per (permit, dataset) -- the study is
the permit's id -- and one per (researcher, dataset) over the researcher's
whole life at this node, so a second permit does not bring the same person
a fresh budget. A charge is one row holding the release's Rényi-DP curve and
the reply itself, written in one durable transaction (SQLite, synchronous
FULL) *before* the reply is handed to the network. Consequences:

- a refused or failed query writes nothing, so costs nothing;
- a charge is filed under a *release key*, which the node makes from the
  signed task's nonce and the step asked for (``node/request.py``), never
  from the message id alone: the same step delivered again -- a re-send after
  a crash or a reconnect, or a compromised coordinator asking again under new
  message ids -- finds its row and gets the same stored reply back: the same
  release goes out again, never a fresh noisy sample, and is charged once;
- a node killed after the charge but before the reply is sent has paid for a
  release it will send, unchanged, when the step comes again;
- a third budget holds per signed task: everything charged for one signed
  task's steps (``signed_task``) together may cost at most the ``dp`` its
  researcher signed, so a coordinator cannot buy a fit's Newton steps, or a
  training run's rounds, past what was signed.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    Select,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    select,
    update,
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
    # The release key (see the module docstring); the name is the column's first meaning.
    Column("message_id", String(128), primary_key=True),
    Column("study", String(128), nullable=False, index=True),
    Column("researcher", String(256), nullable=False, index=True, server_default=""),
    Column("dataset", String(128), nullable=False, index=True),
    Column("task", String(64), nullable=False),
    Column("mechanism", String(128), nullable=False),
    Column("rdp", Text, nullable=False),
    Column("epsilon", Float, nullable=False),
    Column("delta", Float, nullable=False),
    Column("charged_at", Float, nullable=False),
    Column("reply", LargeBinary, nullable=False),
    Column("signed_task", String(160), nullable=False, index=True, server_default=""),
)
schema_version = Table("ledger_schema", _metadata, Column("version", Integer, primary_key=True))
SCHEMA_VERSION = 3
"""1: charges per (study, dataset); 2: and who asked (charges made before name no one);
3: and the signed task they were a step of (charges made before belong to none)."""


@dataclass(frozen=True)
class TaskBudget:
    """What one signed task may cost at this node: the (epsilon, delta) its researcher signed.

    ``key`` is the task's nonce and type (``NodeRequest.signed_task``); every charge
    made for it is added up against the signed figure, however the coordinator
    splits the task into messages.
    """

    key: str
    epsilon: float
    delta: float

    def allows(self, spent: PrivacyLoss, loss: PrivacyLoss) -> bool:
        return (spent + loss).epsilon(self.delta) <= self.epsilon * (1 + 1e-9)


@dataclass(frozen=True)
class Budget:
    """A (study, dataset) budget at this node: its cap and what has been spent."""

    epsilon: float
    delta: float
    spent: PrivacyLoss

    @classmethod
    def of(cls, privacy: DatasetPrivacy, spent: PrivacyLoss) -> Budget:
        return cls(privacy.epsilon, privacy.delta, spent)

    @classmethod
    def lifetime(cls, privacy: DatasetPrivacy, spent: PrivacyLoss) -> Budget:
        """A researcher's budget on the dataset, over every permit they hold."""
        return cls(privacy.lifetime_epsilon, privacy.delta, spent)

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
    researcher: str
    dataset: str
    task: str
    mechanism: str
    epsilon: float
    delta: float
    charged_at: float
    reply: bytes


@dataclass(frozen=True)
class BudgetRow:
    holder: str
    """The permit (study) or the researcher whose budget this is."""
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
    return _exhausted(
        budget,
        loss,
        f"the privacy budget of study {study!r} on dataset {dataset!r}",
        rule="privacy.budget",
        node=node,
        fix=", or ask the data-access body and the node operator for a larger budget",
    )


def lifetime_exhausted(
    budget: Budget, loss: PrivacyLoss, *, researcher: str, dataset: str, node: str
) -> NodeRefusal:
    return _exhausted(
        budget,
        loss,
        f"{researcher}'s privacy budget on dataset {dataset!r} at this node, over every permit,",
        rule="privacy.researcher_budget",
        node=node,
        fix="; a new permit does not renew it (the node operator sets researcher_epsilon in "
        "the node's policy)",
    )


def task_budget_exhausted(
    budget: TaskBudget, spent: PrivacyLoss, loss: PrivacyLoss, *, node: str
) -> NodeRefusal:
    used = spent.epsilon(budget.delta)
    return NodeRefusal(
        f"the signed task may cost epsilon {budget.epsilon:g} (delta {budget.delta:g}) at this "
        f"node, as its researcher signed; its steps so far cost {used:.4g} and this one would "
        f"cost {loss.epsilon(budget.delta):.4g} more",
        rule="privacy.task_budget",
        node=node,
        fix="the researcher submits a new task for more steps or rounds (each task's dp is "
        "the most all its messages together may cost)",
        remaining_epsilon=max(0.0, budget.epsilon - used),
    )


def _exhausted(
    budget: Budget, loss: PrivacyLoss, whose: str, *, rule: str, node: str, fix: str
) -> NodeRefusal:
    return NodeRefusal(
        f"{whose} is {budget.epsilon:g} (delta {budget.delta:g}); {budget.spent_epsilon:.4g} is "
        f"spent and this release would cost {loss.epsilon(budget.delta):.4g} more",
        rule=rule,
        node=node,
        fix=f"ask for at most epsilon {budget.remaining_epsilon:.4g}{fix}",
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
            version = connection.execute(select(schema_version.c.version)).scalar()
            if version is None:
                connection.execute(insert(schema_version).values(version=SCHEMA_VERSION))
            elif version < SCHEMA_VERSION:
                if version == 1:
                    # Charges made before named no researcher: they count for their permit only.
                    connection.exec_driver_sql(
                        "ALTER TABLE charges ADD COLUMN researcher VARCHAR(256) NOT NULL DEFAULT ''"
                    )
                    connection.exec_driver_sql(
                        "CREATE INDEX ix_charges_researcher ON charges (researcher)"
                    )
                # Charges made before belong to no signed task: no task's budget counts them.
                connection.exec_driver_sql(
                    "ALTER TABLE charges ADD COLUMN signed_task VARCHAR(160) NOT NULL DEFAULT ''"
                )
                connection.exec_driver_sql(
                    "CREATE INDEX ix_charges_signed_task ON charges (signed_task)"
                )
                connection.execute(update(schema_version).values(version=SCHEMA_VERSION))

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

    def lifetime(self, researcher: str, dataset: str, privacy: DatasetPrivacy) -> Budget:
        """What the researcher has spent on the dataset at this node, over every permit."""
        with self._engine.connect() as connection:
            return Budget.lifetime(privacy, _spent_by(connection, researcher, dataset))

    def task_spent(self, signed_task: str) -> PrivacyLoss:
        """What the steps of one signed task have cost at this node so far."""
        with self._engine.connect() as connection:
            return _spent_on(connection, signed_task)

    def stored_reply(self, message_id: str) -> bytes | None:
        """The reply already charged under this release key, if it was charged."""
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
        researcher: str = "",
        task_budget: TaskBudget | None = None,
    ) -> bytes:
        """Write the charge and the reply durably, or refuse if a budget would be exceeded.

        ``message_id`` is the release key. ``researcher`` is who asked, as the permit
        check verified it; without one (a simulation has no permits) only the study's
        budget applies. ``task_budget`` is the signed task's own (None: no signed task).

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
            if researcher:
                lifetime = Budget.lifetime(privacy, _spent_by(connection, researcher, dataset))
                if not lifetime.allows(loss):
                    raise lifetime_exhausted(
                        lifetime, loss, researcher=researcher, dataset=dataset, node=self.node
                    )
            if task_budget is not None:
                spent = _spent_on(connection, task_budget.key)
                if not task_budget.allows(spent, loss):
                    raise task_budget_exhausted(task_budget, spent, loss, node=self.node)
            connection.execute(
                insert(charges).values(
                    message_id=message_id,
                    study=study,
                    researcher=researcher,
                    dataset=dataset,
                    task=task,
                    mechanism=mechanism,
                    rdp=json.dumps(loss.rdp),
                    epsilon=loss.epsilon(privacy.delta),
                    delta=privacy.delta,
                    charged_at=time.time(),
                    reply=reply,
                    signed_task=task_budget.key if task_budget is not None else "",
                )
            )
        return reply

    def charges(self, study: str | None = None) -> list[Charge]:
        """Every charged release (of one study), oldest first."""
        query = select(*[c for c in charges.c if c.name not in ("rdp", "signed_task")]).order_by(
            charges.c.charged_at
        )
        if study is not None:
            query = query.where(charges.c.study == study)
        with self._engine.connect() as connection:
            return [
                Charge(**{**row._asdict(), "reply": bytes(row.reply)})
                for row in connection.execute(query)
            ]

    def summary(self, privacy_for: dict[str, DatasetPrivacy]) -> list[BudgetRow]:
        """Spent and remaining per (study, dataset), at each dataset's policy delta."""
        return self._rows(charges.c.study, privacy_for, lifetime=False)

    def lifetimes(self, privacy_for: dict[str, DatasetPrivacy]) -> list[BudgetRow]:
        """Spent and remaining per (researcher, dataset) over every permit; charges made
        before researchers were recorded are left out."""
        return self._rows(charges.c.researcher, privacy_for, lifetime=True)

    def _rows(
        self, holder: Column[str], privacy_for: dict[str, DatasetPrivacy], *, lifetime: bool
    ) -> list[BudgetRow]:
        with self._engine.connect() as connection:
            keys = connection.execute(
                select(holder, charges.c.dataset)
                .where(holder != "")
                .distinct()
                .order_by(holder, charges.c.dataset)
            ).all()
            rows = []
            for name, dataset in keys:
                privacy = privacy_for.get(dataset, DatasetPrivacy())
                mine = select(charges.c.rdp).where(holder == name, charges.c.dataset == dataset)
                spent = _sum_of(connection, mine)
                releases = len(connection.execute(mine).all())
                cap = privacy.lifetime_epsilon if lifetime else privacy.epsilon
                rows.append(
                    BudgetRow(
                        name, dataset, releases, spent.epsilon(privacy.delta), cap, privacy.delta
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
    return _sum_of(
        connection,
        select(charges.c.rdp).where(charges.c.study == study, charges.c.dataset == dataset),
    )


def _spent_by(connection: Connection, researcher: str, dataset: str) -> PrivacyLoss:
    return _sum_of(
        connection,
        select(charges.c.rdp).where(
            charges.c.researcher == researcher, charges.c.dataset == dataset
        ),
    )


def _spent_on(connection: Connection, signed_task: str) -> PrivacyLoss:
    return _sum_of(connection, select(charges.c.rdp).where(charges.c.signed_task == signed_task))


def _sum_of(connection: Connection, query: Select[Any]) -> PrivacyLoss:
    """Losses compose by adding their Rényi-DP curves, order by order."""
    total = [0.0] * len(PrivacyLoss.zero().rdp)
    for row in connection.execute(query):
        for i, eps in enumerate(json.loads(str(row[0]))):
            total[i] += eps
    return PrivacyLoss(tuple(total))


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()
    # Let our explicit BEGIN IMMEDIATE control transactions instead of pysqlite's implicit ones.
    dbapi_connection.isolation_level = None  # type: ignore[attr-defined]


__all__ = [
    "LEDGER_FILE",
    "Budget",
    "BudgetRow",
    "Charge",
    "PrivacyLedger",
    "TaskBudget",
    "budget_exhausted",
    "lifetime_exhausted",
    "task_budget_exhausted",
]
