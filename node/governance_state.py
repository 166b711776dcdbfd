"""What a node remembers to enforce permits: revocation lists, task nonces, approvals.

One SQLite file in the node's state directory. The newest revocation list of
each body is kept so that a coordinator relaying an older one cannot undo a
revocation; a task's nonce is bound to the run that first used it so that
the same signed task cannot be run twice; each step of a signed task takes
part in at most one secure-aggregation session, recorded here so that a
restart does not forget it; a task on a dataset that needs the operator's
approval waits here until ``oncofed node approvals approve``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    select,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from oncofed.kernel.sqlite import durable_sqlite

STATE_FILE = "governance.sqlite"

log = logging.getLogger(__name__)

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
    Column("run_id", BigInteger, nullable=False),
    Column("permit_id", String(64), nullable=False),
    Column("first_seen", Float, nullable=False),
)
ONE_TASK_PER_RUN = Index("ux_task_nonces_run_id", nonces.c.run_id, unique=True)

secagg_steps = Table(
    "secagg_steps",
    _metadata,
    # A signed task's nonce and the step's digest (``NodeRequest.signed_step``).
    Column("step", String(128), primary_key=True),
    Column("session", String(128), nullable=False),
    Column("run_id", BigInteger, nullable=False),
    Column("started_at", Float, nullable=False),
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
        # One run, one signed task, in the file itself (state files made before had a plain
        # index; where two tasks were ever bound to one run, the operator is told).
        try:
            ONE_TASK_PER_RUN.create(engine, checkfirst=True)
        except IntegrityError:
            log.warning(
                "%s binds one run to several signed tasks; review `oncofed audit export` "
                "for those runs",
                engine.url.database,
            )

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
        """Store a verified list if it is newer than the one held (safe to call concurrently)."""
        with self.engine.begin() as db:
            db.execute(
                sqlite_insert(revocations)
                .values(issuer=issuer, sequence=sequence, signed_json=signed_json)
                .on_conflict_do_nothing()
            )
            db.execute(
                update(revocations)
                .where(revocations.c.issuer == issuer, revocations.c.sequence < sequence)
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

    def bind_nonce(self, nonce: str, run_id: int, permit_id: str) -> tuple[int, float] | None:
        """Bind a task nonce to a run on first sight, in one statement.

        Returns the run the nonce is bound to and when it was first seen, or
        None when the run already carries another signed task.
        """
        with self.engine.begin() as db:
            db.execute(
                sqlite_insert(nonces)
                .values(nonce=nonce, run_id=run_id, permit_id=permit_id, first_seen=time.time())
                .on_conflict_do_nothing()
            )
            row = db.execute(
                select(nonces.c.run_id, nonces.c.first_seen).where(nonces.c.nonce == nonce)
            ).first()
        return (int(row.run_id), float(row.first_seen)) if row is not None else None

    # ---- secure-aggregation sessions --------------------------------------

    def claim_secagg_step(self, step: str, session: str, run_id: int) -> bool:
        """Bind a signed step to a secure-aggregation session, in one statement: True if
        this call bound it, False if the step was bound before (to this session or any
        other) -- a step takes part in one session only, restarts included."""
        with self.engine.begin() as db:
            inserted = db.execute(
                sqlite_insert(secagg_steps)
                .values(step=step, session=session, run_id=run_id, started_at=time.time())
                .on_conflict_do_nothing()
            )
        return bool(inserted.rowcount)

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
    ) -> tuple[Approval, bool]:
        """The run's approval, and whether this call asked for it (False: asked before)."""
        with self.engine.begin() as db:
            inserted = db.execute(
                sqlite_insert(approvals)
                .values(
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
                .on_conflict_do_nothing()
            )
        found = self.approval(run_id)
        assert found is not None
        return found, bool(inserted.rowcount)

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
