"""The node's local audit log: one JSON line per task message, hash-chained.

Each entry records what was asked, under which task, of which dataset, and
what left the node (size and outcome), and carries the SHA-256 of the previous
entry, so an edited, deleted or reordered line breaks the chain. Entries are
flushed and fsynced before the reply is sent: nothing leaves unrecorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


def _digest(entry: dict[str, Any]) -> str:
    body = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


class AuditLog:
    """Append-only, hash-chained JSON-lines file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._last = GENESIS
        for entry in self.entries():
            self._last = entry["hash"]

    def append(self, **fields: Any) -> dict[str, Any]:
        with self._lock:
            entry = {"time": time.time(), **fields, "prev": self._last}
            entry["hash"] = _digest(entry)
            line = json.dumps(entry, sort_keys=True) + "\n"
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            self._last = entry["hash"]
            return entry

    def entries(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield json.loads(line)

    def verify(self) -> list[str]:
        """Problems found in the chain, as readable lines (empty when intact)."""
        problems = []
        prev = GENESIS
        for number, entry in enumerate(self.entries(), start=1):
            claimed = entry.pop("hash", None)
            if entry.get("prev") != prev:
                problems.append(f"entry {number}: does not follow the previous entry")
            if claimed != _digest(entry):
                problems.append(f"entry {number}: content does not match its hash")
            prev = str(claimed)
        return problems


__all__ = ["AuditLog"]
