"""The SQL audit trail names edited, deleted or reordered entries; it prunes only to a signature."""

from __future__ import annotations

import base64
import itertools
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from oncofed.governance import audit
from oncofed.governance.audit import (
    DEFAULT_RETENTION_DAYS,
    GENESIS,
    AuditProblem,
    AuditTrail,
    entry_hash,
)


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """Each entry's time is 1, 2, 3, ... (the list's last value is the time last handed out)."""
    now = [0.0]

    def tick() -> float:
        now.append(now[-1] + 1.0)
        return now[-1]

    monkeypatch.setattr(audit, "time", SimpleNamespace(time=tick))
    yield now


def _trail(tmp_path: Path, key: Ed25519PrivateKey | None, events: int = 12) -> AuditTrail:
    # checkpoint_every=5: events 1-5, checkpoint 6, events 7-11, checkpoint 12, events 13-14.
    trail = AuditTrail.open_sqlite(tmp_path / "state" / "audit.sqlite", key, checkpoint_every=5)
    for i in range(events):
        trail.append(
            actor="alice@example.eu",
            action="describe",
            permit_id=f"permit-{i % 2}",
            dataset="lung",
            outcome="released",
            released_bytes=100 + i,
            run_id=i,
        )
    return trail


@contextmanager
def _db(trail: AuditTrail) -> Iterator[sqlite3.Connection]:
    """The file opened behind the trail's back, as someone with shell access would."""
    database = trail.engine.url.database
    assert database is not None
    db = sqlite3.connect(database, isolation_level=None)
    try:
        yield db
    finally:
        db.close()


def _row(db: sqlite3.Connection, seq: int) -> dict[str, object]:
    db.row_factory = sqlite3.Row
    row = db.execute("SELECT * FROM audit_trail WHERE seq = ?", (seq,)).fetchone()
    return dict(row)


def _rehash(db: sqlite3.Connection, seq: int) -> str:
    """What an attacker does after editing: make the row consistent with itself again."""
    new = entry_hash(_row(db, seq))
    db.execute("UPDATE audit_trail SET hash = ? WHERE seq = ?", (new, seq))
    return new


def test_intact_trail_verifies_and_reopening_continues_the_chain(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    trail = _trail(tmp_path, key)
    entries = list(trail.entries())
    assert [e.seq for e in entries] == list(range(1, 15))
    assert [e.seq for e in entries if e.kind == "checkpoint"] == [6, 12]
    assert entries[0].prev == GENESIS
    assert all(b.prev == a.hash for a, b in itertools.pairwise(entries))
    assert entries[5].details == {"entries": 5}
    assert entries[5].signature is not None and entries[0].signature is None
    assert entries[0].details == {"run_id": 0}
    assert trail.verify() == []
    assert trail.verify(key.public_key()) == []

    reopened = AuditTrail.open_sqlite(tmp_path / "state" / "audit.sqlite", key, checkpoint_every=5)
    entry = reopened.append(actor="bob", action="histogram", outcome="QueryError")
    assert entry.seq == 15 and entry.prev == entries[-1].hash
    assert reopened.verify() == []
    assert DEFAULT_RETENTION_DAYS >= 366


def test_edited_row_is_named(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    trail = _trail(tmp_path, key)
    with _db(trail) as db:
        db.execute("UPDATE audit_trail SET outcome = 'refused' WHERE seq = 7")
    problems = trail.verify()
    assert problems == [AuditProblem(7, "its content does not match its hash (edited)")]
    assert str(problems[0]) == "entry 7: its content does not match its hash (edited)"


def test_edited_row_with_recomputed_hash_is_caught_by_the_next(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    trail = _trail(tmp_path, key)
    with _db(trail) as db:
        db.execute("UPDATE audit_trail SET released_bytes = 1 WHERE seq = 3")
        _rehash(db, 3)
    problems = trail.verify()
    assert [p.seq for p in problems] == [4]
    assert str(problems[0]).startswith("entry 4: does not follow entry 3")


def test_rewriting_the_rest_of_the_chain_is_caught_by_the_checkpoint_signature(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    trail = _trail(tmp_path, key)
    with _db(trail) as db:
        db.execute("UPDATE audit_trail SET outcome = 'refused' WHERE seq = 3")
        prev = _rehash(db, 3)
        for seq in range(4, 15):
            db.execute("UPDATE audit_trail SET prev = ? WHERE seq = ?", (prev, seq))
            prev = _rehash(db, seq)
    problems = trail.verify()
    assert {p.seq for p in problems} == {6, 12}
    assert all("signature is not valid" in p.problem for p in problems)


def test_checkpoints_turned_into_events_are_caught_by_their_absence(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    """Without the key, the attacker unsigns the checkpoints instead of forging them."""
    trail = _trail(tmp_path, key)
    with _db(trail) as db:
        db.execute("UPDATE audit_trail SET outcome = 'refused' WHERE seq = 3")
        db.execute("UPDATE audit_trail SET kind = 'event', signature = NULL WHERE seq IN (6, 12)")
        prev = _rehash(db, 3)
        for seq in range(4, 15):
            db.execute("UPDATE audit_trail SET prev = ? WHERE seq = ?", (prev, seq))
            prev = _rehash(db, seq)
    problems = trail.verify(key.public_key())
    assert [p.seq for p in problems] == [6]  # where the first unsigned stretch grew too long
    assert "without a signed checkpoint" in problems[0].problem


def test_deleted_row_is_named(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    trail = _trail(tmp_path, key)
    with _db(trail) as db:
        db.execute("DELETE FROM audit_trail WHERE seq = 8")
    assert [str(p) for p in trail.verify()] == [
        "entry 9: does not follow entry 7 — entry 8 was deleted or the order changed"
    ]


def test_swapped_rows_are_named(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    trail = _trail(tmp_path, key)
    with _db(trail) as db:
        db.execute("UPDATE audit_trail SET seq = -1 WHERE seq = 3")
        db.execute("UPDATE audit_trail SET seq = 3 WHERE seq = 4")
        db.execute("UPDATE audit_trail SET seq = 4 WHERE seq = -1")
    named = {p.seq for p in trail.verify()}
    assert {3, 4} <= named


def test_swapped_rows_with_recomputed_hashes_break_the_chain(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    trail = _trail(tmp_path, key)
    with _db(trail) as db:
        db.execute("UPDATE audit_trail SET seq = -1 WHERE seq = 3")
        db.execute("UPDATE audit_trail SET seq = 3 WHERE seq = 4")
        db.execute("UPDATE audit_trail SET seq = 4 WHERE seq = -1")
        _rehash(db, 3)
        _rehash(db, 4)
    problems = trail.verify()
    assert problems and all("does not follow" in p.problem for p in problems)
    assert {3, 4} <= {p.seq for p in problems}


def test_bad_or_missing_checkpoint_signature_is_named(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    trail = _trail(tmp_path, key)
    with _db(trail) as db:
        other = _row(db, 12)["signature"]
        db.execute("UPDATE audit_trail SET signature = ? WHERE seq = 6", (other,))
        db.execute("UPDATE audit_trail SET signature = NULL WHERE seq = 12")
    assert [str(p) for p in trail.verify(key.public_key())] == [
        "entry 6: the checkpoint entry's signature is not valid "
        "(forged, altered, or made with another key)",
        "entry 12: the checkpoint entry is not signed",
    ]
    # Not base64 at all is as bad as a wrong signature.
    with _db(trail) as db:
        db.execute("UPDATE audit_trail SET signature = 'not base64!' WHERE seq = 6")
    assert 6 in {p.seq for p in trail.verify()}


def test_wrong_public_key_is_named(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    trail = _trail(tmp_path, key)
    stranger = Ed25519PrivateKey.generate().public_key()
    assert {p.seq for p in trail.verify(stranger)} == {6, 12}
    # A reader without the signing key checks with the key it is given.
    reader = AuditTrail.open_sqlite(tmp_path / "state" / "audit.sqlite", create=False)
    assert reader.verify(key.public_key()) == []
    assert {p.seq for p in reader.verify(stranger)} == {6, 12}


def test_checkpoint_on_demand(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    unsigned = _trail(tmp_path / "a", None, events=3)
    assert unsigned.checkpoint() is None
    assert [e.kind for e in unsigned.entries()] == ["event"] * 3
    signed = _trail(tmp_path / "b", key, events=3)
    point = signed.checkpoint()
    assert point is not None and point.seq == 4 and point.details == {"entries": 3}
    key.public_key().verify(base64.b64decode(point.signature or ""), point.hash.encode())
    # The automatic checkpoint counts events since the last signed entry.
    for _ in range(5):
        signed.append(actor="a", action="describe", outcome="released")
    assert [e.kind for e in signed.entries()][-2:] == ["event", "checkpoint"]
    assert signed.verify() == []


def test_prune_keeps_the_trail_verifiable(
    tmp_path: Path, key: Ed25519PrivateKey, clock: list[float]
) -> None:
    trail = _trail(tmp_path, key)  # entry n has time n
    # The newest signed entry older than 12.5 is checkpoint 12: entries 1-12 go.
    assert trail.prune(older_than=12.5) == 12
    entries = list(trail.entries())
    assert [e.seq for e in entries] == [13, 14, 15]
    pruned = entries[-1]
    assert pruned.kind == "pruned" and pruned.signature is not None
    assert pruned.details["removed_through_seq"] == 12
    assert pruned.details["removed_through_hash"] == entries[0].prev
    assert pruned.details["removed"] == 12
    assert trail.verify() == []
    assert trail.verify(key.public_key()) == []

    # A cut-off before any signed entry removes nothing.
    assert trail.prune(older_than=13.5) == 0
    # Later entries, a checkpoint, and a second pruning past the first pruning record.
    for _ in range(6):
        trail.append(actor="bob", action="describe", outcome="released")
    assert trail.prune(older_than=clock[-1] + 1) == 9  # 13-21: through the checkpoint at 21
    assert next(trail.entries()).seq == 22
    assert trail.verify() == []


def test_prune_needs_a_signer_and_an_intact_stretch(
    tmp_path: Path, key: Ed25519PrivateKey, clock: list[float]
) -> None:
    with pytest.raises(ValueError, match="signing key"):
        _trail(tmp_path / "a", None).prune(older_than=100.0)
    clock[:] = [0.0]
    trail = _trail(tmp_path / "b", key)
    with _db(trail) as db:
        db.execute("UPDATE audit_trail SET outcome = 'refused' WHERE seq = 2")
    with pytest.raises(ValueError, match="entry 2: its content does not match"):
        trail.prune(older_than=12.5)
    assert len(list(trail.entries())) == 14


def test_deleted_head_without_pruning_record_is_named(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    trail = _trail(tmp_path, key)
    with _db(trail) as db:
        db.execute("DELETE FROM audit_trail WHERE seq <= 6")
    assert [str(p) for p in trail.verify()] == [
        "entry 7: entries 1\u20136 are missing and no signed pruning record explains it"
    ]


def test_head_deleted_beyond_a_pruning_record_or_with_a_forged_one_is_named(
    tmp_path: Path, key: Ed25519PrivateKey, clock: list[float]
) -> None:
    trail = _trail(tmp_path, key)
    trail.prune(older_than=12.5)
    with _db(trail) as db:
        db.execute("DELETE FROM audit_trail WHERE seq = 13")
    assert [str(p) for p in trail.verify()] == [
        "entry 14: entry 13 is missing and no signed pruning record explains it"
    ]

    clock[:] = [0.0]
    forged = _trail(tmp_path / "forged", key)
    forged.prune(older_than=12.5)
    with _db(forged) as db:
        db.execute("UPDATE audit_trail SET signature = ? WHERE seq = 15", ("AAAA",))
    problems = [str(p) for p in forged.verify()]
    assert "entry 13: entries 1\u201312 are missing and no signed pruning record explains it" in (
        problems
    )
    assert any(
        p.startswith("entry 15: the pruned entry's signature is not valid") for p in problems
    )


def test_export_returns_one_permits_entries_and_the_chain_state(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    trail = _trail(tmp_path, key)
    record = trail.export("permit-1")
    assert record["permit_id"] == "permit-1"
    assert [e["seq"] for e in record["entries"]] == [2, 4, 7, 9, 11, 14]
    assert all(e["permit_id"] == "permit-1" for e in record["entries"])
    chain = record["chain"]
    assert chain["first_seq"] == 1 and chain["last_seq"] == 14
    assert chain["head_hash"] == list(trail.entries())[-1].hash
    assert chain["verified"] is True and chain["problems"] == []
    # The exported rows are as stored, so the body can recompute each hash itself.
    assert all(entry_hash(e) == e["hash"] for e in record["entries"])

    with _db(trail) as db:
        db.execute("DELETE FROM audit_trail WHERE seq = 5")
    broken = trail.export("permit-1")["chain"]
    assert broken["verified"] is False
    assert broken["problems"] == [
        "entry 6: does not follow entry 4 — entry 5 was deleted or the order changed"
    ]


def test_concurrent_appends_from_threads_form_one_chain(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    trail = AuditTrail.open_sqlite(tmp_path / "audit.sqlite", key)

    def work(worker: int) -> None:
        for i in range(50):
            trail.append(actor=f"worker-{worker}", action="describe", outcome="released", i=i)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    entries = list(trail.entries())
    assert sum(e.kind == "event" for e in entries) == 200
    assert [e.seq for e in entries if e.kind == "checkpoint"] == [101, 202]
    assert [e.seq for e in entries] == list(range(1, 203))
    assert trail.verify() == []


def test_two_writers_on_one_file_form_one_chain(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    """Two AuditTrail objects stand for two processes: separate locks and connections."""
    path = tmp_path / "audit.sqlite"
    writers = [AuditTrail.open_sqlite(path, key, checkpoint_every=25) for _ in range(2)]

    def work(trail: AuditTrail) -> None:
        for _ in range(40):
            trail.append(actor="node", action="describe", outcome="released")

    threads = [threading.Thread(target=work, args=(w,)) for w in writers for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    entries = list(writers[0].entries())
    assert sum(e.kind == "event" for e in entries) == 160
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    assert writers[1].verify() == []


def test_long_values_are_cut_to_the_columns_and_detail_is_canonical(tmp_path: Path) -> None:
    trail = AuditTrail.open_sqlite(tmp_path / "audit.sqlite")
    entry = trail.append(actor="x" * 300, action="a" * 100, outcome="Error" * 20, z=1, a=[1, 2])
    assert len(entry.actor) == 256 and len(entry.action) == 64 and len(entry.outcome) == 64
    assert entry.detail == '{"a":[1,2],"z":1}'
    assert trail.verify() == []
    with pytest.raises(ValueError, match="checkpoint_every"):
        AuditTrail.open_sqlite(tmp_path / "other.sqlite", checkpoint_every=0)


def test_the_coordinator_migration_makes_the_same_table(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    from sqlalchemy import inspect

    from oncofed.coordinator.db import open_database

    engine = open_database(f"sqlite:///{tmp_path / 'coordinator.db'}")
    try:
        columns = {c["name"]: c for c in inspect(engine).get_columns("audit_trail")}
        assert list(columns) == [c.name for c in audit.AUDIT_TABLE.columns]
        for column in audit.AUDIT_TABLE.columns:
            assert columns[column.name]["nullable"] == column.nullable, column.name
        trail = AuditTrail(engine, key, checkpoint_every=2, create=False)
        for _ in range(3):
            trail.append(actor="hdab", action="permit.issue", permit_id="p", outcome="released")
        assert [e.kind for e in trail.entries()] == ["event", "event", "checkpoint", "event"]
        assert trail.verify() == []
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_writers_form_one_chain(postgres_url: str, key: Ed25519PrivateKey) -> None:
    from sqlalchemy import create_engine

    from oncofed.coordinator.db import open_database

    engines = [open_database(postgres_url), create_engine(postgres_url)]
    try:
        writers = [AuditTrail(e, key, checkpoint_every=25, create=False) for e in engines]

        def work(trail: AuditTrail) -> None:
            for i in range(30):
                trail.append(
                    actor="coordinator", action="task", outcome="released", epsilon=0.1 * i
                )

        threads = [threading.Thread(target=work, args=(w,)) for w in writers for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        entries = list(writers[0].entries())
        assert sum(e.kind == "event" for e in entries) == 120
        assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
        assert writers[1].verify() == []
        with engines[0].begin() as db:
            db.exec_driver_sql("UPDATE audit_trail SET epsilon = 9 WHERE seq = 5")
        assert [p.seq for p in writers[0].verify()] == [5]
    finally:
        for engine in engines:
            engine.dispose()
