"""The node audit log detects an edited, deleted or reordered entry."""

from __future__ import annotations

import json
from pathlib import Path

from oncofed.node.audit import AuditLog


def _log(tmp_path: Path) -> AuditLog:
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(4):
        log.append(action="describe", outcome="released", released_bytes=100 + i)
    return log


def test_intact_log_verifies_and_survives_reopening(tmp_path: Path) -> None:
    log = _log(tmp_path)
    assert log.verify() == []
    reopened = AuditLog(log.path)
    reopened.append(action="describe", outcome="QueryError")
    assert reopened.verify() == []
    assert len(list(reopened.entries())) == 5


def test_edited_entry_is_named(tmp_path: Path) -> None:
    log = _log(tmp_path)
    lines = log.path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["released_bytes"] = 1
    lines[1] = json.dumps(entry, sort_keys=True)
    log.path.write_text("\n".join(lines) + "\n")
    assert log.verify() == ["entry 2: content does not match its hash"]


def test_deleted_and_reordered_entries_break_the_chain(tmp_path: Path) -> None:
    log = _log(tmp_path)
    lines = log.path.read_text().splitlines()
    log.path.write_text("\n".join([lines[0], *lines[2:]]) + "\n")
    assert "entry 2: does not follow the previous entry" in log.verify()
    log.path.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    assert log.verify()[0] == "entry 1: does not follow the previous entry"
