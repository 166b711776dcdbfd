"""What a compromised coordinator can do: write any message into its own queue, as the
coordinator's database is its queue, and read the node's reply (tests that play it)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from flwr.app import Message

from oncofed.coordinator.store import OutgoingMessage, Store
from oncofed.kernel.flower import (
    attach_authorisation,
    from_bytes,
    params_content,
    stamp,
    to_bytes,
)

REPLY_SECONDS = 60.0


def send_through_the_queue(
    store: Store,
    node: str,
    action: str,
    params: dict[str, Any],
    authorisation: str | None,
    run_id: int | None = None,
) -> tuple[Message, int]:
    """One message to ``node`` in a task of its own; the node's reply and the run id used
    (the new task's own run unless ``run_id`` names another)."""
    node_id = {n.name: n.node_id for n in store.nodes()}[node]
    task = store.create_task(action, "{}", "attacker")
    assert task is not None
    message = Message(
        params_content(json.dumps(params), participants=4), node_id, f"query.{action}", ttl=60
    )
    message_id = uuid.uuid4().hex
    run = run_id if run_id is not None else task.run_id
    stamp(message, run_id=run, message_id=message_id)
    if authorisation is not None:
        attach_authorisation(message, authorisation)
    outgoing = OutgoingMessage(
        message_id,
        node_id,
        message.metadata.message_type,
        to_bytes(message),
        time.time() + REPLY_SECONDS,
    )
    store.put_messages(task.task_id, [outgoing])
    deadline = time.monotonic() + REPLY_SECONDS
    while time.monotonic() < deadline:
        replies = store.replies([message_id])
        if replies:
            return from_bytes(replies[message_id]), run
        time.sleep(0.1)
    raise AssertionError(f"{node} did not answer")
