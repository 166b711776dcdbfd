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
        self._connected: dict[str, object] = {}
        self._version = 0

    def claim(self, node_name: str) -> object | None:
        """Take the one stream a node name may have: a token, or None while another holds it.

        Two processes under one name would otherwise take the stream from each
        other in turn, each takeover sending the other's messages again.
        """
        with self._lock:
            if node_name in self._connected:
                return None
            token = self._connected[node_name] = object()
            return token

    def release(self, node_name: str, token: object) -> None:
        """Give the name back; only the stream holding ``token`` can (so twice is harmless)."""
        with self._lock:
            if self._connected.get(node_name) is token:
                del self._connected[node_name]

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
