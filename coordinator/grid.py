"""The governed Grid: Flower's ``Grid`` over the coordinator's own node streams.

A task's server function drives this exactly as it drives Flower's in-memory
grid under ``run_simulation``. Differences that matter:

* messages are rows in the coordinator database before they are sent;
* message ids are derived from (task, push order, destination, type, content),
  so a server function replayed after a coordinator restart finds the replies
  its first run already received instead of asking the nodes again;
* a message that expires unanswered comes back as a typed error reply that
  names the node, so the task fails with a clear reason instead of hanging;
* a message a node holds for its operator's approval is sent again until
  approved (the node link re-queues it), and the task's status says so;
* every message carries the task's authorisation (signed task, permit,
  revocation lists) for the node to check by itself;
* a cancelled task stops at its next call into the grid.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from oncofed.coordinator.hub import Hub
from oncofed.coordinator.store import OutgoingMessage, Store
from oncofed.kernel.errors import ApprovalPending, NodeUnavailable, OncofedError, TaskCancelled
from oncofed.kernel.flower import (
    Run,
    attach_authorisation,
    content_digest,
    empty_run,
    error_reply,
    from_bytes,
    stamp,
    to_bytes,
)

MESSAGE_NAMESPACE = uuid.UUID("6f1c2b0e-3d5a-4c1e-9b7a-0c4f2e8d9a11")


class GovernedGrid(Grid):
    def __init__(
        self,
        store: Store,
        hub: Hub,
        task_id: str,
        run_id: int,
        authorisation: Callable[[], str],
    ) -> None:
        self._store = store
        self._authorisation = authorisation
        self._hub = hub
        self._task_id = task_id
        self._run = empty_run(run_id)
        self._sequence = itertools.count()
        self._sent: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def report(self, detail: str) -> None:
        """A line of progress for the researcher watching this task."""
        self._store.set_detail(self._task_id, detail)

    def get_node_ids(self) -> Iterable[int]:
        self._check_cancelled()
        return self._store.online_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self._check_cancelled()
        outgoing = []
        authorisation = self._authorisation()
        for message in messages:
            meta = message.metadata
            key = (
                f"{self._task_id}/{next(self._sequence)}/{meta.dst_node_id}/"
                f"{meta.message_type}/{meta.group_id}/{content_digest(message)}"
            )
            message_id = uuid.uuid5(MESSAGE_NAMESPACE, key).hex
            stamp(message, run_id=self._run.run_id, message_id=message_id)
            # After the id: a replay after a restart may carry a newer revocation list.
            attach_authorisation(message, authorisation)
            self._sent[message_id] = message
            outgoing.append(
                OutgoingMessage(
                    message_id=message_id,
                    dst_node_id=meta.dst_node_id,
                    message_type=meta.message_type,
                    payload=to_bytes(message),
                    expires_at=time.time() + meta.ttl,
                )
            )
        self._store.put_messages(self._task_id, outgoing)
        for node_id in {m.dst_node_id for m in outgoing}:
            self._hub.notify_node(node_id)
        return [m.message_id for m in outgoing]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self._check_cancelled()
        wanted = list(message_ids)
        replies = [from_bytes(p) for p in self._store.replies(wanted).values()]
        answered = {r.metadata.reply_to_message_id for r in replies}
        pending = [m for m in wanted if m not in answered]
        for message_id, node_id, held in self._store.expired(pending):
            original = self._sent.get(message_id)
            if original is None:
                continue
            name = self._store.node_name(node_id)
            ttl = original.metadata.ttl
            if held:
                error: OncofedError = ApprovalPending(
                    f"the operator of {name} did not approve the task within {ttl:g} s",
                    rule="node.approval_pending",
                    node=name,
                    fix="ask the centre's operator to approve it (`oncofed node approvals "
                    "approve`), then submit again; or raise the task's timeout",
                )
            else:
                error = NodeUnavailable(
                    f"node {name} did not reply before the message expired ({ttl:g} s)",
                    rule="task.timeout",
                    node=name,
                    fix="check that the node is running and connected, or raise the task's timeout",
                )
            replies.append(error_reply(original, error))
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        pending = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        received: list[Message] = []
        last_pull = False
        while pending:
            seen = self._hub.progress_version()
            batch = list(self.pull_messages(pending))
            received.extend(batch)
            pending.difference_update(m.metadata.reply_to_message_id for m in batch)
            if last_pull or not pending:
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                # One more pull turns messages that expired meanwhile into named errors.
                last_pull = True
                continue
            self._hub.wait_progress(0.25 if remaining is None else min(0.25, remaining), seen)
        return received

    def _check_cancelled(self) -> None:
        if self._store.is_cancelled(self._task_id):
            raise TaskCancelled(f"task {self._task_id} was cancelled", rule="task.cancelled")


__all__ = ["GovernedGrid"]
