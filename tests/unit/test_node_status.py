"""The node's status file: written whole, read back, and judged by process and heartbeat."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from oncofed.node.status import (
    STALE_HEARTBEATS,
    STATUS_FILE,
    NodeStatus,
    StatusWriter,
    is_running,
    judge,
    read_status,
    write_status,
)

NOW = 1_800_000_000.0


def _status(**changes: object) -> NodeStatus:
    base = NodeStatus(
        pid=os.getpid(),
        state="connected",
        coordinator="coordinator.example.org:7100",
        node_id=42,
        since=NOW - 600,
        last_heartbeat=NOW - 2,
        heartbeat_seconds=5.0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def _dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_written_status_reads_back_the_same_and_leaves_no_temporary_file(
    tmp_path: Path,
) -> None:
    status = _status(detail="connection lost (UNAVAILABLE)")
    write_status(tmp_path, status)
    assert read_status(tmp_path) == status
    assert [p.name for p in tmp_path.iterdir()] == [STATUS_FILE]
    raw = json.loads((tmp_path / STATUS_FILE).read_text())
    assert set(raw) == {
        "pid",
        "state",
        "coordinator",
        "node_id",
        "since",
        "last_heartbeat",
        "heartbeat_seconds",
        "detail",
    }


@pytest.mark.parametrize(
    "content", ["", "{not json", '{"pid": 1}', json.dumps({**_status().__dict__, "state": "odd"})]
)
def test_a_missing_or_malformed_status_reads_as_none(tmp_path: Path, content: str) -> None:
    assert read_status(tmp_path) is None
    (tmp_path / STATUS_FILE).write_text(content)
    assert read_status(tmp_path) is None
    assert judge(None) == "unknown" and not is_running("unknown")


def test_a_live_connected_node_is_connected_until_its_heartbeat_is_stale() -> None:
    fresh = _status()
    assert judge(fresh, NOW) == "connected" and is_running("connected")
    limit = STALE_HEARTBEATS * fresh.heartbeat_seconds
    assert judge(_status(last_heartbeat=NOW - limit + 0.5), NOW) == "connected"
    stale = _status(last_heartbeat=NOW - limit - 0.5)
    assert judge(stale, NOW) == "not responding" and not is_running("not responding")
    # Before the first heartbeat, the welcome's time counts.
    assert judge(_status(last_heartbeat=None, since=NOW - 1), NOW) == "connected"
    assert judge(_status(last_heartbeat=None, since=NOW - limit - 1), NOW) == "not responding"


def test_a_node_whose_process_is_gone_is_not_running_whatever_it_wrote() -> None:
    gone = _dead_pid()
    for state in ("connected", "connecting", "disconnected"):
        verdict = judge(_status(pid=gone, state=state), NOW)
        assert verdict == "ended" and not is_running(verdict)
    assert judge(_status(pid=gone, state="stopped"), NOW) == "stopped"
    # A node that wrote "stopped" is not running, even if its pid was reused since.
    assert judge(_status(state="stopped"), NOW) == "stopped"


def test_a_connecting_or_disconnected_live_node_is_running_without_heartbeats() -> None:
    old = NOW - 3600
    for state in ("connecting", "disconnected"):
        verdict = judge(_status(state=state, since=old, last_heartbeat=None), NOW)
        assert verdict == state and is_running(verdict)


def test_the_writer_keeps_since_within_a_state_and_records_heartbeats(tmp_path: Path) -> None:
    writer = StatusWriter(tmp_path, "127.0.0.1:7100", 5.0)
    writer.enter("connecting")
    first = read_status(tmp_path)
    assert first is not None and first.state == "connecting" and first.pid == os.getpid()
    writer.note("connection lost (UNAVAILABLE)")
    writer.enter("connecting")
    again = read_status(tmp_path)
    assert again is not None and again.since == first.since
    assert again.detail == "connection lost (UNAVAILABLE)"
    writer.enter("connected", node_id=7, heartbeat_seconds=1.0, detail="")
    writer.heartbeat()
    connected = read_status(tmp_path)
    assert connected is not None
    assert (connected.state, connected.node_id, connected.heartbeat_seconds) == (
        "connected",
        7,
        1.0,
    )
    assert connected.since >= first.since and connected.last_heartbeat is not None
    assert connected.detail == ""
    writer.enter("stopped")
    stopped = read_status(tmp_path)
    assert stopped is not None and judge(stopped) == "stopped"


def test_a_status_that_cannot_be_written_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "no-such-folder"
    writer = StatusWriter(missing, "127.0.0.1:7100", 5.0)
    with caplog.at_level(logging.INFO, logger="oncofed.node.status"):
        writer.enter("connecting")
        writer.enter("connected", node_id=1)
        writer.heartbeat()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "status file" in warnings[0].getMessage()
        missing.mkdir()
        writer.heartbeat()
    assert read_status(missing) == writer.status
    assert any("written again" in r.getMessage() for r in caplog.records)
