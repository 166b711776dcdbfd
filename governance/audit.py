"""The audit trail: who asked what, under which permit, and what left -- kept in SQL.

The EHDS asks that access to health data and the processing done with it be
logged identifiably and the logs kept at least a year. A log is only evidence
if its keeper cannot quietly change it, so each entry carries the SHA-256 of
the previous one (a hash chain) and, every ``checkpoint_every`` events, a
``checkpoint`` entry signed with the keeper's Ed25519 key. Editing, deleting or
reordering an entry breaks the chain at that point; an attacker who also
recomputes the hashes after the edit still has to forge the next checkpoint's
signature. Retention (``prune``) removes old entries only up to a signed
point and records that with a signed ``pruned`` entry, so a trail that starts
at entry 10,001 is explained by a signature and not merely believed.

The same table lives in a node's SQLite file and in the coordinator's database
(where an Alembic migration creates it). Writes take the database's write lock
before reading the chain's head, so several processes can share one trail.

What this does NOT detect:

* Truncation: deleting the newest entries leaves a shorter chain that is still
  valid. Entries after the last checkpoint are the most exposed (they are not
  signed at all), but removing checkpoints from the end goes unnoticed too.
  Only a copy of the head held elsewhere (an export, a checkpoint sent to the
  coordinator) catches it.
* A full rewrite by someone holding the signing key: the key is what vouches
  for the trail, so whoever has it can produce a different valid one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    MetaData,
    String,
    Table,
    Text,
    func,
    insert,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from oncofed.kernel.sqlite import durable_sqlite

DEFAULT_RETENTION_DAYS: Final = 366
"""EHDS logs are kept at least a year; one day more covers a leap year."""

GENESIS: Final = "0" * 64
EVENT: Final = "event"
CHECKPOINT: Final = "checkpoint"
PRUNED: Final = "pruned"
KINDS: Final = frozenset({EVENT, CHECKPOINT, PRUNED})
SIGNED_KINDS: Final = frozenset({CHECKPOINT, PRUNED})

AUDIT_METADATA = MetaData()

# Keep in step with coordinator/migrations/versions/0002_governance.py.
AUDIT_TABLE = Table(
    "audit_trail",
    AUDIT_METADATA,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("time", Float, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("actor", String(256), nullable=False),
    Column("action", String(64), nullable=False),
    Column("permit_id", String(128), nullable=False, index=True),
    Column("dataset", String(128), nullable=False),
    Column("params_sha256", String(64), nullable=False),
    Column("outcome", String(64), nullable=False),
    Column("rule", String(128), nullable=False),
    Column("released_bytes", BigInteger, nullable=False),
    Column("epsilon", Float, nullable=False),
    Column("detail", Text, nullable=False),
    Column("prev", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("signature", Text, nullable=True),
)

_HASHED: Final = tuple(c.name for c in AUDIT_TABLE.columns if c.name not in {"hash", "signature"})
# PostgreSQL rejects an over-long value and the SQLite file would silently keep it: truncating
# up front keeps the hash identical on both and an audit write never fails over a long name.
_LIMITS: Final = {
    c.name: c.type.length
    for c in AUDIT_TABLE.columns
    if isinstance(c.type, String)
    and not isinstance(c.type, Text)
    and c.type.length
    and c.name not in {"kind", "prev", "hash"}
}
_PAGE: Final = 500
_T = TypeVar("_T")
_WRITE_ATTEMPTS: Final = 5


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def entry_hash(row: Mapping[str, Any]) -> str:
    """SHA-256 hex of every column but ``hash`` and ``signature``, as canonical JSON."""
    return hashlib.sha256(
        canonical_json({name: row[name] for name in _HASHED}).encode()
    ).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    time: float
    kind: str
    actor: str
    action: str
    permit_id: str
    dataset: str
    params_sha256: str
    outcome: str
    rule: str
    released_bytes: int
    epsilon: float
    detail: str
    prev: str
    hash: str
    signature: str | None

    @property
    def details(self) -> dict[str, Any]:
        """``detail`` parsed: the fields the caller passed beyond the columns."""
        value = json.loads(self.detail)
        return value if isinstance(value, dict) else {}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def _from_row(cls, row: Mapping[Any, Any]) -> AuditEntry:
        # Coerce: drivers differ in what they hand back, and the hash must see the stored values.
        return cls(
            seq=int(row["seq"]),
            time=float(row["time"]),
            kind=str(row["kind"]),
            actor=str(row["actor"]),
            action=str(row["action"]),
            permit_id=str(row["permit_id"]),
            dataset=str(row["dataset"]),
            params_sha256=str(row["params_sha256"]),
            outcome=str(row["outcome"]),
            rule=str(row["rule"]),
            released_bytes=int(row["released_bytes"]),
            epsilon=float(row["epsilon"]),
            detail=str(row["detail"]),
            prev=str(row["prev"]),
            hash=str(row["hash"]),
            signature=None if row["signature"] is None else str(row["signature"]),
        )


@dataclass(frozen=True)
class AuditProblem:
    seq: int
    problem: str

    def __str__(self) -> str:
        return f"entry {self.seq}: {self.problem}"


def _signature_valid(key: Ed25519PublicKey, entry: AuditEntry) -> bool:
    if not entry.signature:
        return False
    try:
        key.verify(base64.b64decode(entry.signature, validate=True), entry.hash.encode("ascii"))
    except (InvalidSignature, ValueError):
        return False
    return True


def _entries_phrase(first: int, last: int) -> str:
    return f"entry {first}" if first == last else f"entries {first}\u2013{last}"


def _chain_problems(
    entries: Iterator[AuditEntry], key: Ed25519PublicKey | None, checkpoint_every: int | None
) -> list[AuditProblem]:
    problems: list[AuditProblem] = []
    # The writer signs a checkpoint after every ``checkpoint_every`` events, so a longer
    # unsigned stretch means checkpoints were removed or turned into events -- the only
    # way to rewrite signed history without the key.
    unsigned = 0
    # (removed_through_seq, removed_through_hash) from pruning records that are themselves sound.
    prunings: list[tuple[int, str]] = []
    first: AuditEntry | None = None
    before: AuditEntry | None = None
    for entry in entries:
        intact = entry_hash(asdict(entry)) == entry.hash
        if entry.kind not in KINDS:
            problems.append(AuditProblem(entry.seq, f"unknown kind {entry.kind!r}"))
        if not intact:
            problems.append(AuditProblem(entry.seq, "its content does not match its hash (edited)"))
        unsigned = 0 if entry.kind in SIGNED_KINDS else unsigned + 1
        if checkpoint_every is not None and unsigned == checkpoint_every + 1:
            problems.append(
                AuditProblem(
                    entry.seq,
                    f"more than {checkpoint_every} entries without a signed checkpoint "
                    "(checkpoints were removed or altered)",
                )
            )
        signed = True
        if entry.kind in SIGNED_KINDS:
            if not entry.signature:
                signed = False
                problems.append(AuditProblem(entry.seq, f"the {entry.kind} entry is not signed"))
            elif key is not None and not _signature_valid(key, entry):
                signed = False
                problems.append(
                    AuditProblem(
                        entry.seq,
                        f"the {entry.kind} entry's signature is not valid "
                        "(forged, altered, or made with another key)",
                    )
                )
        if entry.kind == PRUNED and signed and intact:
            try:
                stated = entry.details
                prunings.append(
                    (int(stated["removed_through_seq"]), str(stated["removed_through_hash"]))
                )
            except (ValueError, KeyError, TypeError):
                problems.append(AuditProblem(entry.seq, "the pruning record is unreadable"))
        if before is None:
            first = entry
        elif entry.seq != before.seq + 1:
            gone = _entries_phrase(before.seq + 1, entry.seq - 1)
            verb = "was" if entry.seq == before.seq + 2 else "were"
            problems.append(
                AuditProblem(
                    entry.seq,
                    f"does not follow entry {before.seq} — {gone} {verb} deleted "
                    "or the order changed",
                )
            )
        elif entry.prev != before.hash:
            problems.append(
                AuditProblem(
                    entry.seq,
                    f"does not follow entry {before.seq} — its prev is not entry "
                    f"{before.seq}'s hash (reordered, or entry {before.seq} was rewritten)",
                )
            )
        before = entry
    if first is not None:
        problems[:0] = _head_problems(first, prunings)
    return problems


def _head_problems(first: AuditEntry, prunings: list[tuple[int, str]]) -> list[AuditProblem]:
    """Whether the first entry present may start the chain.

    Entry 1 starts it from 0…0; any later entry only if a sound pruning record, further
    down the chain and so covered by its signature, names the entry just before it.
    """
    if first.seq == 1:
        if first.prev == GENESIS:
            return []
        return [AuditProblem(1, "the first entry does not start the chain (its prev is not 0…0)")]
    if (first.seq - 1, first.prev) in prunings:
        return []
    through = max((seq for seq, _ in prunings if seq < first.seq), default=0)
    if through == first.seq - 1:
        return [
            AuditProblem(
                first.seq,
                f"does not follow the pruned entry {through} "
                "(its prev is not the hash the pruning record states)",
            )
        ]
    missing = _entries_phrase(through + 1, first.seq - 1)
    verb = "is" if through + 1 == first.seq - 1 else "are"
    return [
        AuditProblem(
            first.seq, f"{missing} {verb} missing and no signed pruning record explains it"
        )
    ]


class AuditTrail:
    """Append-only, hash-chained, checkpoint-signed audit trail in one SQL table."""

    def __init__(
        self,
        engine: Engine,
        signer: Ed25519PrivateKey | None = None,
        *,
        checkpoint_every: int = 100,
        create: bool = True,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        self.engine = engine
        self.signer = signer
        self.checkpoint_every = checkpoint_every
        self._lock = threading.Lock()
        self._owns_engine = False
        if create:
            AUDIT_METADATA.create_all(engine)

    @classmethod
    def open_sqlite(
        cls,
        path: Path,
        signer: Ed25519PrivateKey | None = None,
        *,
        checkpoint_every: int = 100,
        create: bool = True,
    ) -> AuditTrail:
        trail = cls(durable_sqlite(path), signer, checkpoint_every=checkpoint_every, create=create)
        trail._owns_engine = True
        return trail

    def close(self) -> None:
        """Release the connections of an engine this trail made (a caller's engine is theirs)."""
        if self._owns_engine:
            self.engine.dispose()

    # ---- writing --------------------------------------------------------

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A transaction that holds the trail's write lock from before the head is read.

        Without it two processes could read the same head and fork the chain; the primary
        key on ``seq`` would refuse the second insert, but the lock avoids the failure.
        """
        with self.engine.connect() as db:
            dialect = self.engine.dialect.name
            if dialect == "sqlite":
                # A deferred BEGIN would only take the write lock at the INSERT, after the read.
                db.exec_driver_sql("BEGIN IMMEDIATE")
            elif dialect == "postgresql":
                # EXCLUSIVE blocks other writers but not readers; a row lock cannot cover the
                # empty table nor stop a second writer from re-reading the same head.
                db.exec_driver_sql(f"LOCK TABLE {AUDIT_TABLE.name} IN EXCLUSIVE MODE")
            try:
                yield db
            except BaseException:
                db.rollback()
                raise
            db.commit()

    def _write(
        self,
        db: Connection,
        *,
        kind: str,
        columns: Mapping[str, Any],
        detail: Mapping[str, Any],
    ) -> AuditEntry:
        head = db.execute(
            select(AUDIT_TABLE.c.seq, AUDIT_TABLE.c.hash)
            .order_by(AUDIT_TABLE.c.seq.desc())
            .limit(1)
        ).first()
        seq, prev = (int(head.seq) + 1, str(head.hash)) if head is not None else (1, GENESIS)
        row: dict[str, Any] = {
            "actor": "",
            "action": "",
            "permit_id": "",
            "dataset": "",
            "params_sha256": "",
            "outcome": "",
            "rule": "",
            "released_bytes": 0,
            "epsilon": 0.0,
            **columns,
            "seq": seq,
            "time": time.time(),
            "kind": kind,
            # default=str: an odd detail value must not stop the record (and the reply) going out.
            "detail": json.dumps(dict(detail), sort_keys=True, separators=(",", ":"), default=str),
            "prev": prev,
        }
        for name, limit in _LIMITS.items():
            if isinstance(row[name], str):
                row[name] = row[name][:limit]
        row["released_bytes"] = int(row["released_bytes"])
        row["epsilon"] = float(row["epsilon"])
        row["hash"] = entry_hash(row)
        row["signature"] = None
        if kind in SIGNED_KINDS:
            if self.signer is None:
                raise ValueError(f"a {kind} entry needs a signing key")
            row["signature"] = base64.b64encode(
                self.signer.sign(row["hash"].encode("ascii"))
            ).decode()
        db.execute(insert(AUDIT_TABLE).values(**row))
        return AuditEntry._from_row(row)

    def _checkpoint_due(self, db: Connection) -> bool:
        last_signed = db.scalar(
            select(func.max(AUDIT_TABLE.c.seq)).where(AUDIT_TABLE.c.kind.in_(SIGNED_KINDS))
        )
        unsigned = db.scalar(
            select(func.count())
            .select_from(AUDIT_TABLE)
            .where(AUDIT_TABLE.c.seq > (last_signed or 0), AUDIT_TABLE.c.kind == EVENT)
        )
        return int(unsigned or 0) >= self.checkpoint_every

    def _checkpoint_in(self, db: Connection) -> AuditEntry:
        head = db.scalar(select(func.max(AUDIT_TABLE.c.seq)))
        return self._write(
            db,
            kind=CHECKPOINT,
            columns={"action": "checkpoint", "outcome": "signed"},
            detail={"entries": int(head or 0)},
        )

    def _retrying(self, body: Callable[[Connection], _T]) -> _T:
        # SQLite and PostgreSQL are locked above; on another database two writers can still
        # race for the same seq, and the loser simply starts again from the new head.
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                with self._lock, self._writing() as db:
                    return body(db)
            except IntegrityError:
                if attempt == _WRITE_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def append(
        self,
        *,
        actor: str,
        action: str,
        permit_id: str = "",
        dataset: str = "",
        params_sha256: str = "",
        outcome: str,
        rule: str = "",
        released_bytes: int = 0,
        epsilon: float = 0.0,
        **detail: Any,
    ) -> AuditEntry:
        """Record one event; it is committed (durably) when this returns.

        Extra keyword arguments go into ``detail`` as JSON. With a signer, every
        ``checkpoint_every`` events a signed checkpoint follows in the same transaction.
        """
        columns = {
            "actor": actor,
            "action": action,
            "permit_id": permit_id,
            "dataset": dataset,
            "params_sha256": params_sha256,
            "outcome": outcome,
            "rule": rule,
            "released_bytes": released_bytes,
            "epsilon": epsilon,
        }

        def body(db: Connection) -> AuditEntry:
            entry = self._write(db, kind=EVENT, columns=columns, detail=detail)
            if self.signer is not None and self._checkpoint_due(db):
                self._checkpoint_in(db)
            return entry

        return self._retrying(body)

    def checkpoint(self) -> AuditEntry | None:
        """Sign the chain as it stands now (``None`` without a signing key)."""
        if self.signer is None:
            return None
        return self._retrying(self._checkpoint_in)

    # ---- retention ------------------------------------------------------

    @staticmethod
    def _boundary(db: Connection, older_than: float) -> AuditEntry | None:
        row = db.execute(
            select(AUDIT_TABLE)
            .where(AUDIT_TABLE.c.kind.in_(SIGNED_KINDS), AUDIT_TABLE.c.time < older_than)
            .order_by(AUDIT_TABLE.c.seq.desc())
            .limit(1)
        ).first()
        return None if row is None else AuditEntry._from_row(row._mapping)

    def prune(self, older_than: float) -> int:
        """Delete entries older than ``older_than`` (unix seconds) up to a signed point.

        Only entries up to and including the newest checkpoint (or earlier pruning
        record) older than the cut-off go, so what remains starts right after a signed
        entry; a signed ``pruned`` entry appended at the end states where. Refuses
        (``ValueError``) to delete a stretch that fails verification: that would erase
        the evidence. Returns how many entries were removed.
        """
        if self.signer is None:
            raise ValueError("pruning the audit trail needs a signing key")
        with self.engine.connect() as db:
            boundary = self._boundary(db, older_than)
        if boundary is None:
            return 0
        # Verified before taking the write lock: reading a year of entries must not hold up
        # the appends that replies wait for. Entries up to the boundary can only change
        # behind our back by tampering, which the re-check of its hash below notices.
        broken = [p for p in self.verify() if p.seq <= boundary.seq + 1]
        if broken:
            raise ValueError(
                "will not prune audit entries that fail verification: "
                + "; ".join(str(p) for p in broken)
            )

        def body(db: Connection) -> int:
            held = db.scalar(select(AUDIT_TABLE.c.hash).where(AUDIT_TABLE.c.seq == boundary.seq))
            if held != boundary.hash:
                # Another process pruned past it meanwhile (or it changed): nothing verified to do.
                return 0
            removed = int(
                db.execute(AUDIT_TABLE.delete().where(AUDIT_TABLE.c.seq <= boundary.seq)).rowcount
            )
            self._write(
                db,
                kind=PRUNED,
                columns={"action": "prune", "outcome": "removed"},
                detail={
                    "removed_through_seq": boundary.seq,
                    "removed_through_hash": boundary.hash,
                    "removed": removed,
                },
            )
            return removed

        return self._retrying(body)

    # ---- reading --------------------------------------------------------

    def entries(self, permit_id: str | None = None) -> Iterator[AuditEntry]:
        """Entries in chain order, optionally only those recorded under one permit."""
        # Keyset pages: no connection (nor SQLite read snapshot) stays open while a caller
        # holds the iterator.
        after = 0
        while True:
            query = select(AUDIT_TABLE).where(AUDIT_TABLE.c.seq > after)
            if permit_id is not None:
                query = query.where(AUDIT_TABLE.c.permit_id == permit_id)
            with self.engine.connect() as db:
                rows = db.execute(query.order_by(AUDIT_TABLE.c.seq).limit(_PAGE)).mappings().all()
            for row in rows:
                yield AuditEntry._from_row(row)
            if len(rows) < _PAGE:
                return
            after = int(rows[-1]["seq"])

    def verify(self, public_key: Ed25519PublicKey | None = None) -> list[AuditProblem]:
        """Everything wrong with the trail, entry by entry (empty when intact).

        Signatures are checked against ``public_key``, or the trail's own signer's when
        none is given; with neither, signed entries are only checked to carry one, and
        the spacing of checkpoints is not checked (a trail written without a key has none).
        """
        if public_key is None and self.signer is not None:
            public_key = self.signer.public_key()
        spacing = self.checkpoint_every if public_key is not None else None
        return _chain_problems(self.entries(), public_key, spacing)

    def export(self, permit_id: str, public_key: Ed25519PublicKey | None = None) -> dict[str, Any]:
        """What a health data access body asks for: one permit's entries, and the chain's state.

        ``verified`` covers the whole trail, not only these entries: a gap anywhere may
        have been one of them.
        """
        exported_at = time.time()
        selected = [entry.as_dict() for entry in self.entries(permit_id)]
        with self.engine.connect() as db:
            first_seq = db.scalar(select(func.min(AUDIT_TABLE.c.seq)))
            last = db.execute(
                select(AUDIT_TABLE.c.seq, AUDIT_TABLE.c.hash)
                .order_by(AUDIT_TABLE.c.seq.desc())
                .limit(1)
            ).first()
        problems = self.verify(public_key)
        return {
            "permit_id": permit_id,
            "exported_at": exported_at,
            "entries": selected,
            "chain": {
                "first_seq": None if first_seq is None else int(first_seq),
                "last_seq": None if last is None else int(last.seq),
                "head_hash": GENESIS if last is None else str(last.hash),
                "verified": not problems,
                "problems": [str(p) for p in problems],
            },
        }


def export_problems(record: Mapping[str, Any]) -> list[str]:
    """What a recipient of ``AuditTrail.export`` can check without the trail itself.

    Each entry's hash is recomputed from its content (an entry edited after the
    export, or by whoever handled the file, no longer matches it), entries must
    be in chain order and all under the exported permit, and the keeper's own
    verification must have passed. A trail cut short at its end is not visible
    here: compare ``chain.head_hash`` with the previous export's.
    """
    problems: list[str] = []
    chain = record["chain"]
    if not chain["verified"]:
        problems += [f"the keeper's verification failed: {p}" for p in chain["problems"]]
    previous = 0
    for entry in record["entries"]:
        if entry_hash(entry) != entry["hash"]:
            problems.append(f"entry {entry['seq']}: its content does not match its hash (edited)")
        if entry["seq"] <= previous:
            problems.append(f"entry {entry['seq']}: out of chain order")
        if entry["permit_id"] != record["permit_id"]:
            problems.append(f"entry {entry['seq']}: not under permit {record['permit_id']}")
        previous = entry["seq"]
    return problems


__all__ = [
    "AUDIT_METADATA",
    "AUDIT_TABLE",
    "CHECKPOINT",
    "DEFAULT_RETENTION_DAYS",
    "EVENT",
    "GENESIS",
    "PRUNED",
    "AuditEntry",
    "AuditProblem",
    "AuditTrail",
    "canonical_json",
    "entry_hash",
    "export_problems",
]
