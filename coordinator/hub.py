"""In-process wake-ups between task threads and node streams.

The database holds every message and reply; the hub only saves the waiting
side a polling delay: a node stream wakes when a message for it is queued, a
task or a watching researcher wakes when a reply arrives or a task ends.
"""

from __future__ import annotations

import threading


class Hub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[int, threading.Event] = {}
        self._replies = threading.Condition()
        self._generation: dict[int, int] = {}
        self._version = 0

    def connect(self, node_id: int) -> int:
        """Register a new stream for a node; the newest stream is the node's live one."""
        with self._lock:
            self._generation[node_id] = self._generation.get(node_id, 0) + 1
            # Wake an older stream's sender so it sees it was superseded and stops.
            self._nodes.setdefault(node_id, threading.Event()).set()
            return self._generation[node_id]

    def is_current(self, node_id: int, generation: int) -> bool:
        """Whether this stream is the node's newest; the closing one then means offline."""
        with self._lock:
            return self._generation.get(node_id) == generation

    def node_event(self, node_id: int) -> threading.Event:
        with self._lock:
            return self._nodes.setdefault(node_id, threading.Event())

    def notify_node(self, node_id: int) -> None:
        self.node_event(node_id).set()

    def progress_version(self) -> int:
        with self._replies:
            return self._version

    def notify_progress(self) -> None:
        """A reply arrived or a task changed state."""
        with self._replies:
            self._version += 1
            self._replies.notify_all()

    def wait_progress(self, timeout: float, since: int) -> None:
        """Wait for progress after version ``since`` (returns at once if it already came)."""
        with self._replies:
            if self._version == since:
                self._replies.wait(timeout)


__all__ = ["Hub"]
