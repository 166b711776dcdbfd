"""Every read and write of the coordinator's state, one short transaction each.

The database is the queue: a message is a row before it is sent, a reply is a
row before any task reads it, so a coordinator restart loses nothing.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from oncofed.coordinator.db import MessageRow, NodeRow, ReplyRow, TaskRow

TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class TaskView:
    task_id: str
    run_id: int
    task_type: str
    params: str
    researcher: str
    state: str
    detail: str
    attempts: int
    expected: int
    replies: int
    created_at: float
    updated_at: float
    result: str | None
    error: str | None
    permit_id: str | None = None
    signed_task: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class NodeView:
    node_id: int
    name: str
    version: str
    datasets: str
    online: bool
    last_seen: float


@dataclass(frozen=True)
class OutgoingMessage:
    message_id: str
    dst_node_id: int
    message_type: str
    payload: bytes
    expires_at: float


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # ---- nodes ----------------------------------------------------------

    def register_node(self, name: str, version: str, datasets_json: str) -> int:
        """A node's stable id: the same name always gets the same id back."""
        now = time.time()
        with self._session() as db, db.begin():
            row = db.scalar(select(NodeRow).where(NodeRow.name == name))
            if row is None:
                row = NodeRow(
                    # Flower node ids are positive ints; 0 and 1 are Flower's own.
                    node_id=secrets.randbelow(2**53 - 2) + 2,
                    name=name,
                    registered_at=now,
                )
                db.add(row)
            row.version, row.datasets = version, datasets_json
            row.online, row.last_seen = True, now
            return row.node_id

    def set_online(self, node_id: int, online: bool) -> None:
        with self._session() as db, db.begin():
            db.execute(
                update(NodeRow)
                .where(NodeRow.node_id == node_id)
                .values(online=online, last_seen=time.time())
            )

    def mark_all_offline(self) -> None:
        with self._session() as db, db.begin():
            db.execute(update(NodeRow).values(online=False))

    def online_node_ids(self) -> list[int]:
        with self._session() as db:
            return sorted(db.scalars(select(NodeRow.node_id).where(NodeRow.online)))

    def nodes(self) -> list[NodeView]:
        with self._session() as db:
            rows = db.scalars(select(NodeRow).order_by(NodeRow.name))
            return [
                NodeView(r.node_id, r.name, r.version, r.datasets, r.online, r.last_seen)
                for r in rows
            ]

    def node_name(self, node_id: int) -> str:
        with self._session() as db:
            name = db.scalar(select(NodeRow.name).where(NodeRow.node_id == node_id))
            return name if name is not None else str(node_id)

    # ---- tasks ----------------------------------------------------------

    def create_task(
        self,
        task_type: str,
        params: str,
        researcher: str,
        *,
        permit_id: str | None = None,
        nonce: str | None = None,
        signed_task: str | None = None,
    ) -> TaskView | None:
        """A new queued task; None if its nonce was used before (a replayed submission)."""
        now = time.time()
        row = TaskRow(
            task_id=uuid.uuid4().hex,
            run_id=secrets.randbelow(2**53 - 1) + 1,
            task_type=task_type,
            params=params,
            researcher=researcher,
            state="queued",
            detail="waiting to start",
            attempts=0,
            created_at=now,
            updated_at=now,
            permit_id=permit_id,
            nonce=nonce,
            signed_task=signed_task,
        )
        try:
            with self._session() as db, db.begin():
                db.add(row)
        except IntegrityError:
            return None
        return self.task(row.task_id)

    def task(self, task_id: str) -> TaskView | None:
        with self._session() as db:
            row = db.get(TaskRow, task_id)
            if row is None:
                return None
            expected = db.scalar(
                select(func.count()).select_from(MessageRow).where(MessageRow.task_id == task_id)
            )
            replies = db.scalar(
                select(func.count())
                .select_from(ReplyRow)
                .join(MessageRow, MessageRow.message_id == ReplyRow.message_id)
                .where(MessageRow.task_id == task_id)
            )
            return TaskView(
                task_id=row.task_id,
                run_id=row.run_id,
                task_type=row.task_type,
                params=row.params,
                researcher=row.researcher,
                state=row.state,
                detail=row.detail,
                attempts=row.attempts,
                expected=int(expected or 0),
                replies=int(replies or 0),
                created_at=row.created_at,
                updated_at=row.updated_at,
                result=row.result,
                error=row.error,
                permit_id=row.permit_id,
                signed_task=row.signed_task,
            )

    def unfinished_task_ids(self) -> list[str]:
        with self._session() as db:
            return list(
                db.scalars(
                    select(TaskRow.task_id)
                    .where(TaskRow.state.not_in(TERMINAL_STATES))
                    .order_by(TaskRow.created_at)
                )
            )

    def start_task(self, task_id: str) -> bool:
        """Mark a task running; False if it was finished (e.g. cancelled) meanwhile."""
        with self._session() as db, db.begin():
            changed = db.execute(
                update(TaskRow)
                .where(TaskRow.task_id == task_id, TaskRow.state.not_in(TERMINAL_STATES))
                .values(
                    state="running",
                    detail="running",
                    attempts=TaskRow.attempts + 1,
                    updated_at=time.time(),
                )
            )
            return bool(changed.rowcount)  # type: ignore[attr-defined]

    def set_detail(self, task_id: str, detail: str) -> None:
        with self._session() as db, db.begin():
            db.execute(
                update(TaskRow)
                .where(TaskRow.task_id == task_id, TaskRow.state.not_in(TERMINAL_STATES))
                .values(detail=detail, updated_at=time.time())
            )

    def finish_task(
        self,
        task_id: str,
        state: str,
        *,
        detail: str,
        result: str | None = None,
        error: str | None = None,
    ) -> bool:
        """Record the outcome once; a task already finished keeps its first outcome."""
        assert state in TERMINAL_STATES
        with self._session() as db, db.begin():
            changed = db.execute(
                update(TaskRow)
                .where(TaskRow.task_id == task_id, TaskRow.state.not_in(TERMINAL_STATES))
                .values(
                    state=state,
                    detail=detail,
                    result=result,
                    error=error,
                    updated_at=time.time(),
                )
            )
            return bool(changed.rowcount)  # type: ignore[attr-defined]

    def unfinished_under_permit(self, permit_id: str) -> list[str]:
        with self._session() as db:
            return list(
                db.scalars(
                    select(TaskRow.task_id).where(
                        TaskRow.permit_id == permit_id, TaskRow.state.not_in(TERMINAL_STATES)
                    )
                )
            )

    def is_cancelled(self, task_id: str) -> bool:
        with self._session() as db:
            return db.scalar(select(TaskRow.state).where(TaskRow.task_id == task_id)) == (
                "cancelled"
            )

    # ---- messages and replies ------------------------------------------

    def put_messages(self, task_id: str, messages: Iterable[OutgoingMessage]) -> None:
        """Store messages to send.

        A replayed task (after a coordinator restart) pushes the same ids again:
        answered ones keep their reply, unanswered ones get the new expiry.
        """
        now = time.time()
        with self._session() as db, db.begin():
            for msg in messages:
                existing = db.get(MessageRow, msg.message_id)
                if existing is not None:
                    if existing.state != "answered":
                        existing.expires_at = msg.expires_at
                    continue
                db.add(
                    MessageRow(
                        message_id=msg.message_id,
                        task_id=task_id,
                        dst_node_id=msg.dst_node_id,
                        message_type=msg.message_type,
                        payload=msg.payload,
                        state="queued",
                        created_at=now,
                        expires_at=msg.expires_at,
                    )
                )

    def take_undelivered(self, node_id: int) -> list[tuple[str, bytes]]:
        """Queued, unexpired messages for a node, marked delivered in the same transaction."""
        now = time.time()
        with self._session() as db, db.begin():
            rows = list(
                db.scalars(
                    select(MessageRow)
                    .where(
                        MessageRow.dst_node_id == node_id,
                        MessageRow.state == "queued",
                        MessageRow.expires_at > now,
                        or_(MessageRow.not_before.is_(None), MessageRow.not_before <= now),
                    )
                    .order_by(MessageRow.created_at)
                )
            )
            for row in rows:
                row.state, row.delivered_at = "delivered", now
            return [(row.message_id, row.payload) for row in rows]

    def requeue_unanswered(self, node_id: int) -> int:
        """Messages a node received but never answered go out again on its next connection."""
        with self._session() as db, db.begin():
            changed = db.execute(
                update(MessageRow)
                .where(MessageRow.dst_node_id == node_id, MessageRow.state == "delivered")
                .values(state="queued")
            )
            return int(changed.rowcount)  # type: ignore[attr-defined]

    def put_reply(self, message_id: str, src_node_id: int, payload: bytes) -> bool:
        """Store a reply; refused unless it answers an open message sent to that node."""
        with self._session() as db, db.begin():
            msg = db.get(MessageRow, message_id)
            if msg is None or msg.dst_node_id != src_node_id or msg.state == "answered":
                return False
            msg.state = "answered"
            db.add(
                ReplyRow(
                    message_id=message_id,
                    src_node_id=src_node_id,
                    payload=payload,
                    received_at=time.time(),
                )
            )
            return True

    def defer(
        self, message_id: str, src_node_id: int, delay: Callable[[float], float]
    ) -> str | None:
        """Queue a message again for a node holding it pending approval; its task's id.

        ``delay`` maps how long the message has waited to how long until it goes
        out again. Refused (None) unless the message is open and was sent to that node.
        """
        now = time.time()
        with self._session() as db, db.begin():
            msg = db.get(MessageRow, message_id)
            if msg is None or msg.dst_node_id != src_node_id or msg.state == "answered":
                return None
            msg.state, msg.not_before = "queued", now + delay(now - msg.created_at)
            return msg.task_id

    def replies(self, message_ids: Iterable[str]) -> dict[str, bytes]:
        ids = list(message_ids)
        if not ids:
            return {}
        with self._session() as db:
            rows = db.execute(
                select(ReplyRow.message_id, ReplyRow.payload).where(ReplyRow.message_id.in_(ids))
            )
            return {mid: payload for mid, payload in rows}

    def expired(self, message_ids: Iterable[str]) -> list[tuple[str, int, bool]]:
        """Unanswered messages past their expiry: (message id, destination, held for approval)."""
        ids = list(message_ids)
        if not ids:
            return []
        with self._session() as db:
            rows = db.execute(
                select(MessageRow.message_id, MessageRow.dst_node_id, MessageRow.not_before).where(
                    MessageRow.message_id.in_(ids),
                    MessageRow.state != "answered",
                    MessageRow.expires_at <= time.time(),
                )
            )
            return [(mid, dst, held is not None) for mid, dst, held in rows]


__all__ = ["TERMINAL_STATES", "NodeView", "OutgoingMessage", "Store", "TaskView"]
