"""The node's status file: whether its process runs and is connected, for its operator.

The node writes ``STATE_DIR/status.json`` when it starts connecting, when the
coordinator welcomes it, on each heartbeat it sends, when the connection ends
and when it stops. Nothing reads it back into the node: it is only what the
operator's console (and a monitoring script) reads. A process that dies
without stopping leaves a file saying "connected", so a reader judges it by
whether the process still exists and how old its last heartbeat is
(``judge``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
STALE_HEARTBEATS = 3
"""A connected node whose last heartbeat is older than this many intervals is not responding
(the coordinator drops a node after as many missed ones)."""

State = Literal["connecting", "connected", "disconnected", "stopped"]
Verdict = Literal[
    "connected", "connecting", "disconnected", "stopped", "not responding", "ended", "unknown"
]
"""What a reader concludes: the state written, or ``not responding`` (connected, but no
heartbeat for too long), ``ended`` (the process is gone without having written
``stopped``), ``unknown`` (no status file, or one that cannot be read)."""


@dataclass(frozen=True)
class NodeStatus:
    """One status file's content; times are Unix seconds."""

    pid: int
    state: State
    coordinator: str
    node_id: int | None
    """The coordinator's id for the current connection (None before the first welcome)."""
    since: float
    """When ``state`` began."""
    last_heartbeat: float | None
    heartbeat_seconds: float
    """The interval in use: the config's, or the coordinator's when shorter."""
    detail: str = ""
    """Why the last connection attempt failed or ended ("" when it did not)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> NodeStatus:
        """The status in ``text``; ValueError when it is not a status file's content."""
        raw: Any = json.loads(text)
        try:
            status = cls(
                pid=int(raw["pid"]),
                state=raw["state"],
                coordinator=str(raw["coordinator"]),
                node_id=None if raw.get("node_id") is None else int(raw["node_id"]),
                since=float(raw["since"]),
                last_heartbeat=None
                if raw.get("last_heartbeat") is None
                else float(raw["last_heartbeat"]),
                heartbeat_seconds=float(raw["heartbeat_seconds"]),
                detail=str(raw.get("detail", "")),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a node status: {exc}") from None
        if status.state not in get_args(State):
            raise ValueError(f"not a node state: {status.state!r}")
        return status


def read_status(state_dir: Path) -> NodeStatus | None:
    """The status the node last wrote; None when there is none or it cannot be read."""
    try:
        return NodeStatus.from_json((state_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_status(state_dir: Path, status: NodeStatus) -> None:
    """Replace the status file in one step, so a reader never sees half of one."""
    path = state_dir / STATUS_FILE
    # One temporary name per process: a second process started on the same state folder
    # by mistake must not rename the first one's half-written file.
    temporary = path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
    # No fsync: the file is rewritten on every heartbeat and means nothing after a power cut.
    temporary.write_text(status.to_json() + "\n", encoding="utf-8")
    os.replace(temporary, path)


def process_exists(pid: int) -> bool:
    """Whether a process with this id exists on this host (signal 0 checks, sends nothing)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, run by another user (the node's service account)
    return True


def judge(status: NodeStatus | None, now: float | None = None) -> Verdict:
    """What the status means now, on the host the node runs on."""
    if status is None:
        return "unknown"
    if status.state == "stopped":
        return "stopped"
    if not process_exists(status.pid):
        return "ended"
    if status.state == "connected":
        last = status.last_heartbeat if status.last_heartbeat is not None else status.since
        moment = time.time() if now is None else now
        if moment - last > STALE_HEARTBEATS * status.heartbeat_seconds:
            return "not responding"
    return status.state


def is_running(verdict: Verdict) -> bool:
    """Whether a verdict means a live node process (connected or trying to be)."""
    return verdict in ("connected", "connecting", "disconnected")


class StatusWriter:
    """The running node's side: holds its status and rewrites the file on every change.

    It never raises: a status file that cannot be written (a full disk, a folder
    made read-only) must not stop the node, whose work does not depend on it.
    """

    def __init__(self, state_dir: Path, coordinator: str, heartbeat_seconds: float) -> None:
        self.state_dir = state_dir
        self._lock = threading.Lock()  # the session and heartbeat threads both write
        self._status = NodeStatus(
            pid=os.getpid(),
            state="connecting",
            coordinator=coordinator,
            node_id=None,
            since=time.time(),
            last_heartbeat=None,
            heartbeat_seconds=heartbeat_seconds,
        )
        self._failing = False

    @property
    def status(self) -> NodeStatus:
        return self._status

    def enter(self, state: State, **fields: Any) -> None:
        """Record ``state`` (its ``since`` kept when it is the state already) and other fields."""
        with self._lock:
            since = self._status.since if state == self._status.state else time.time()
            self._status = replace(self._status, state=state, since=since, **fields)
            self._write()

    def note(self, detail: str) -> None:
        """Record why the connection failed or ended, keeping the state."""
        with self._lock:
            self._status = replace(self._status, detail=detail)
            self._write()

    def heartbeat(self) -> None:
        with self._lock:
            self._status = replace(self._status, last_heartbeat=time.time())
            self._write()

    def _write(self) -> None:
        try:
            write_status(self.state_dir, self._status)
        except Exception as exc:
            # Once per run of failures: a heartbeat every few seconds would flood the log.
            if not self._failing:
                log.warning(
                    "cannot write the status file in %s (%s); the node goes on without it",
                    self.state_dir,
                    exc,
                )
            self._failing = True
        else:
            if self._failing:
                log.info("the status file in %s is written again", self.state_dir)
            self._failing = False


__all__ = [
    "STALE_HEARTBEATS",
    "STATUS_FILE",
    "NodeStatus",
    "State",
    "StatusWriter",
    "Verdict",
    "is_running",
    "judge",
    "process_exists",
    "read_status",
    "write_status",
]
