"""What a node remembers to enforce permits: revocation lists, task nonces, approvals.

One SQLite file in the node's state directory. The newest revocation list of
each body is kept so that a coordinator relaying an older one cannot undo a
revocation; a task's nonce is bound to the run that first used it so that
the same signed task cannot be run twice; a task on a dataset that needs the
operator's approval waits here until ``oncofed node approvals approve``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from oncofed.kernel.sqlite import durable_sqlite

STATE_FILE = "governance.sqlite"

_metadata = MetaData()
revocations = Table(
    "revocations",
    _metadata,
    Column("issuer", String(64), primary_key=True),
    Column("sequence", Integer, nullable=False),
    Column("signed_json", Text, nullable=False),
)
nonces = Table(
    "task_nonces",
    _metadata,
    Column("nonce", String(32), primary_key=True),
    Column("run_id", BigInteger, nullable=False, index=True),
    Column("permit_id", String(64), nullable=False),
    Column("first_seen", Float, nullable=False),
)
approvals = Table(
    "approvals",
    _metadata,
    Column("run_id", BigInteger, primary_key=True),
    Column("permit_id", String(64), nullable=False),
    Column("researcher", String(64), nullable=False),
    Column("task_type", String(64), nullable=False),
    Column("dataset", String(64), nullable=False),
    Column("params_json", Text, nullable=False),
    Column("requested_at", Float, nullable=False),
    Column("state", String(16), nullable=False),
    Column("decided_at", Float, nullable=True),
    Column("reason", Text, nullable=False, default=""),
)

Decision = Literal["pending", "approved", "rejected"]


@dataclass(frozen=True)
class Approval:
    run_id: int
    permit_id: str
    researcher: str
    task_type: str
    dataset: str
    params_json: str
    requested_at: float
    state: Decision
    decided_at: float | None
    reason: str


class GovernanceState:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        _metadata.create_all(engine)

    @classmethod
    def at(cls, state_dir: Path) -> GovernanceState:
        return cls(durable_sqlite(state_dir / STATE_FILE))

    # ---- revocation lists ----------------------------------------------

    def newest_revocations(self, issuer: str) -> str | None:
        with self.engine.connect() as db:
            return db.scalar(
                select(revocations.c.signed_json).where(revocations.c.issuer == issuer)
            )

    def keep_revocations(self, issuer: str, sequence: int, signed_json: str) -> None:
        """Store a verified list if it is newer than the one held."""
        with self.engine.begin() as db:
            held = db.scalar(select(revocations.c.sequence).where(revocations.c.issuer == issuer))
            if held is None:
                db.execute(
                    insert(revocations).values(
                        issuer=issuer, sequence=sequence, signed_json=signed_json
                    )
                )
            elif sequence > held:
                db.execute(
                    update(revocations)
                    .where(revocations.c.issuer == issuer)
                    .values(sequence=sequence, signed_json=signed_json)
                )

    # ---- nonces ----------------------------------------------------------

    def nonce_run(self, nonce: str) -> tuple[int, float] | None:
        """The run a nonce is bound to and when it was first seen, or None."""
        with self.engine.connect() as db:
            row = db.execute(
                select(nonces.c.run_id, nonces.c.first_seen).where(nonces.c.nonce == nonce)
            ).first()
        return (int(row.run_id), float(row.first_seen)) if row is not None else None

    def run_nonce(self, run_id: int) -> str | None:
        """The signed task (its nonce) a run carries, or None for a run not seen yet."""
        with self.engine.connect() as db:
            return db.scalar(select(nonces.c.nonce).where(nonces.c.run_id == run_id).limit(1))

    def bind_nonce(self, nonce: str, run_id: int, permit_id: str) -> int:
        """Bind a task nonce to a run on first sight; returns the run it is bound to."""
        try:
            with self.engine.begin() as db:
                bound = db.scalar(select(nonces.c.run_id).where(nonces.c.nonce == nonce))
                if bound is not None:
                    return int(bound)
                db.execute(
                    insert(nonces).values(
                        nonce=nonce, run_id=run_id, permit_id=permit_id, first_seen=time.time()
                    )
                )
                return run_id
        except IntegrityError:
            # Two messages of one task arrived at once; the other thread bound it first.
            with self.engine.connect() as db:
                return int(db.scalar(select(nonces.c.run_id).where(nonces.c.nonce == nonce)) or 0)

    # ---- approvals -------------------------------------------------------

    def request_approval(
        self,
        *,
        run_id: int,
        permit_id: str,
        researcher: str,
        task_type: str,
        dataset: str,
        params_json: str,
    ) -> Approval:
        with self.engine.begin() as db:
            row = db.execute(select(approvals).where(approvals.c.run_id == run_id)).first()
            if row is None:
                db.execute(
                    insert(approvals).values(
                        run_id=run_id,
                        permit_id=permit_id,
                        researcher=researcher,
                        task_type=task_type,
                        dataset=dataset,
                        params_json=params_json,
                        requested_at=time.time(),
                        state="pending",
                        reason="",
                    )
                )
        found = self.approval(run_id)
        assert found is not None
        return found

    def approval(self, run_id: int) -> Approval | None:
        with self.engine.connect() as db:
            row = db.execute(select(approvals).where(approvals.c.run_id == run_id)).first()
        return Approval(**row._mapping) if row is not None else None

    def approvals(self, state: Decision | None = None) -> list[Approval]:
        query = select(approvals).order_by(approvals.c.requested_at)
        if state is not None:
            query = query.where(approvals.c.state == state)
        with self.engine.connect() as db:
            return [Approval(**row._mapping) for row in db.execute(query)]

    def decide(self, run_id: int, state: Decision, reason: str = "") -> bool:
        """Record the operator's decision on a pending request; False if there is none."""
        with self.engine.begin() as db:
            changed = db.execute(
                update(approvals)
                .where(approvals.c.run_id == run_id, approvals.c.state == "pending")
                .values(state=state, decided_at=time.time(), reason=reason)
            )
            return bool(changed.rowcount)


__all__ = ["STATE_FILE", "Approval", "Decision", "GovernanceState"]
