"""Coordinator state: tables, engine and migrations.

SQLite file by default, PostgreSQL (``postgresql+psycopg://...``) in
production. The schema is owned by Alembic migrations in ``migrations/``;
these models mirror them for queries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from oncofed.governance.audit import AUDIT_TABLE
from oncofed.kernel.errors import ConfigError, DatabaseUnavailable

MIGRATIONS = Path(__file__).parent / "migrations"


class Base(DeclarativeBase):
    pass


class NodeRow(Base):
    __tablename__ = "nodes"

    node_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    version: Mapped[str] = mapped_column(String(64))
    datasets: Mapped[str] = mapped_column(Text)
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    last_seen: Mapped[float] = mapped_column(Float)
    registered_at: Mapped[float] = mapped_column(Float)


class TaskRow(Base):
    __tablename__ = "tasks"

    task_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    task_type: Mapped[str] = mapped_column(String(64))
    params: Mapped[str] = mapped_column(Text)
    researcher: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), index=True)
    detail: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)  # sealed (sealing.py)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    permit_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    nonce: Mapped[str | None] = mapped_column(String(32), nullable=True, unique=True)
    signed_task: Mapped[str | None] = mapped_column(Text, nullable=True)


class MessageRow(Base):
    __tablename__ = "messages"

    message_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.task_id"), index=True)
    dst_node_id: Mapped[int] = mapped_column(BigInteger, index=True)
    message_type: Mapped[str] = mapped_column(String(128))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    delivered_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Set when a node answered "pending its operator's approval": queued, but held till then.
    not_before: Mapped[float | None] = mapped_column(Float, nullable=True)


class ReplyRow(Base):
    __tablename__ = "replies"

    message_id: Mapped[str] = mapped_column(ForeignKey("messages.message_id"), primary_key=True)
    src_node_id: Mapped[int] = mapped_column(BigInteger)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[float] = mapped_column(Float)


class ApplicationRow(Base):
    __tablename__ = "applications"

    application_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    applicant: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(24))
    document: Mapped[str] = mapped_column(Text)
    history: Mapped[str] = mapped_column(Text)
    permit_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class PermitRow(Base):
    __tablename__ = "permits"

    permit_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    issuer: Mapped[str] = mapped_column(String(64))
    signed_json: Mapped[str] = mapped_column(Text)
    published_at: Mapped[float] = mapped_column(Float)


class RevocationListRow(Base):
    __tablename__ = "revocation_lists"

    issuer: Mapped[str] = mapped_column(String(64), primary_key=True)
    sequence: Mapped[int] = mapped_column(Integer)
    signed_json: Mapped[str] = mapped_column(Text)
    published_at: Mapped[float] = mapped_column(Float)


# The coordinator's audit trail is the table every node keeps too (governance/audit.py).
AUDIT_TABLE.to_metadata(Base.metadata)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets node streams write replies while task threads read them.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def open_database(url: str) -> Engine:
    """Connect and bring the schema to the newest migration."""
    try:
        engine = create_engine(url, pool_pre_ping=True)
    except (ArgumentError, ModuleNotFoundError) as exc:
        raise ConfigError(
            f"cannot use database URL {url!r}: {exc}",
            rule="coordinator.database",
            fix="use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB "
            "(install oncofed[postgres] for PostgreSQL)",
        ) from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        migrate(engine)
    except OperationalError as exc:
        # Exit code 6, not 3: a supervisor should retry a database that is still starting.
        raise DatabaseUnavailable(
            f"cannot open database {engine.url.render_as_string(hide_password=True)}: {exc.orig}",
            rule="coordinator.database",
            fix="check that the database server is running and the URL is right",
        ) from None
    return engine


def migrate(engine: Engine) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


__all__ = [
    "ApplicationRow",
    "Base",
    "MessageRow",
    "NodeRow",
    "PermitRow",
    "ReplyRow",
    "RevocationListRow",
    "TaskRow",
    "migrate",
    "open_database",
]
