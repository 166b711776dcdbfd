"""The coordinator's record of applications, published permits and revocation lists.

The coordinator only files and relays these documents: a permit is valid
because a data-access body signed it, and each node checks that itself.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from oncofed.coordinator.db import ApplicationRow, PermitRow, RevocationListRow
from oncofed.governance.permits import RevocationList, SignedRevocations

APPLICATION_ID_LENGTH = 32
"""Characters in an application id (a UUID4 in hex); fewer are the start of one."""


@dataclass(frozen=True)
class ApplicationView:
    application_id: str
    applicant: str
    state: str
    document: str
    history: str
    permit_id: str
    updated_at: float


def _view(row: ApplicationRow) -> ApplicationView:
    return ApplicationView(
        row.application_id,
        row.applicant,
        row.state,
        row.document,
        row.history,
        row.permit_id or "",
        row.updated_at,
    )


def _history(row: ApplicationRow, by: str, state: str, note: str) -> str:
    entries = json.loads(row.history or "[]")
    entries.append({"at": time.time(), "by": by, "state": state, "note": note})
    return json.dumps(entries)


class AccessStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # ---- applications ---------------------------------------------------

    def file_application(self, applicant: str, document: str, amends: str = "") -> ApplicationView:
        now = time.time()
        with self._session() as db, db.begin():
            row = db.get(ApplicationRow, amends) if amends else None
            if row is None:
                row = ApplicationRow(
                    application_id=uuid.uuid4().hex,
                    applicant=applicant,
                    history="[]",
                    created_at=now,
                )
                db.add(row)
            row.state, row.document, row.updated_at = "submitted", document, now
            row.history = _history(row, applicant, "submitted", "amended" if amends else "")
            return _view(row)

    def application(self, application_id: str) -> ApplicationView | None:
        with self._session() as db:
            row = db.get(ApplicationRow, application_id)
            return _view(row) if row is not None else None

    def application_ids(
        self, prefix: str, applicant: str | None = None, limit: int = 5
    ) -> list[str]:
        """Up to ``limit`` ids starting with ``prefix`` (only ``applicant``'s, if named).

        People type the first characters of an id, as tables and terminals show
        them; two or more matches mean the prefix names no one application.
        """
        if not prefix:
            return []
        query = (
            select(ApplicationRow.application_id)
            .where(ApplicationRow.application_id.startswith(prefix, autoescape=True))
            .order_by(ApplicationRow.application_id)
            .limit(limit)
        )
        if applicant is not None:
            query = query.where(ApplicationRow.applicant == applicant)
        with self._session() as db:
            return list(db.scalars(query))

    def applications(self, applicant: str | None = None) -> list[ApplicationView]:
        query = select(ApplicationRow).order_by(ApplicationRow.created_at)
        if applicant is not None:
            query = query.where(ApplicationRow.applicant == applicant)
        with self._session() as db:
            return [_view(row) for row in db.scalars(query)]

    def decide(
        self, application_id: str, state: str, by: str, note: str, permit_id: str = ""
    ) -> ApplicationView | None:
        with self._session() as db, db.begin():
            row = db.get(ApplicationRow, application_id)
            if row is None:
                return None
            row.state, row.updated_at = state, time.time()
            if permit_id:
                row.permit_id = permit_id
            row.history = _history(row, by, state, note)
            return _view(row)

    # ---- permits and revocation lists -----------------------------------

    def publish_permit(self, permit_id: str, version: int, issuer: str, signed: str) -> bool:
        """Store a permit or an amendment; False if a newer version is already held."""
        with self._session() as db, db.begin():
            row = db.get(PermitRow, permit_id)
            if row is not None and row.version >= version:
                return False
            if row is None:
                row = PermitRow(permit_id=permit_id)
                db.add(row)
            row.version, row.issuer, row.signed_json = version, issuer, signed
            row.published_at = time.time()
            return True

    def permit_issuer(self, permit_id: str) -> str | None:
        with self._session() as db:
            return db.scalar(select(PermitRow.issuer).where(PermitRow.permit_id == permit_id))

    def permit(self, permit_id: str) -> str | None:
        with self._session() as db:
            row = db.get(PermitRow, permit_id)
            return row.signed_json if row is not None else None

    def publish_revocations(self, issuer: str, sequence: int, signed: str) -> bool:
        with self._session() as db, db.begin():
            row = db.get(RevocationListRow, issuer)
            if row is not None and row.sequence >= sequence:
                return False
            if row is None:
                row = RevocationListRow(issuer=issuer)
                db.add(row)
            row.sequence, row.signed_json, row.published_at = sequence, signed, time.time()
            return True

    def newest_revocations(self, issuer: str) -> RevocationList | None:
        """The body's newest published revocation list (verified when it was published)."""
        with self._session() as db:
            row = db.get(RevocationListRow, issuer)
        if row is None:
            return None
        return SignedRevocations.model_validate_json(row.signed_json).revocations

    def revocation_lists(self) -> list[str]:
        with self._session() as db:
            return list(db.scalars(select(RevocationListRow.signed_json)))


__all__ = ["APPLICATION_ID_LENGTH", "AccessStore", "ApplicationView"]
