"""SQLite files for a node's state that must outlive a crash or a power cut."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine


def _pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers (verify, export, the operator's CLI) never block the node's writes;
    # FULL: a committed row survives a power cut, since the reply it records may have left.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def durable_sqlite(path: Path) -> Engine:
    """An engine on ``path`` (its folder created), with the settings above on every connection."""
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{path}")
    event.listen(engine, "connect", _pragmas)
    return engine


__all__ = ["durable_sqlite"]
