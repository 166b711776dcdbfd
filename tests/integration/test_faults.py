"""Faults a real network meets: restarts, frozen and dying nodes."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import pandas as pd
import pytest

from oncofed.client.sandbox import Sandbox
from oncofed.client.session import Session
from oncofed.kernel.errors import NodeUnavailable
from tests.oracle import PER_REQUEST_ROWS, assert_describe_matches

COLUMNS = ["age", "meal.cal", "wt.loss"]


@pytest.fixture
def net(lung: pd.DataFrame) -> Iterator[Sandbox]:
    with Sandbox.from_frame(
        lung, split_by="centre", dataset="lung", policy=PER_REQUEST_ROWS, release="exact"
    ) as sandbox:
        yield sandbox


def _wait_state(session: Session, task_id: str, state: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while session.status(task_id).state != state:
        assert time.monotonic() < deadline, f"task never reached {state}"
        time.sleep(0.1)


def test_queued_task_survives_a_coordinator_crash(net: Sandbox, lung: pd.DataFrame) -> None:
    """kill -9 the coordinator while a task waits for nodes; restart on the same database."""
    for name in net.node_names:
        net.stop_node(name)
    with net.session(progress=False) as session:
        task_id = session.submit(
            "describe", dataset="lung", columns=COLUMNS, min_nodes=4, timeout=120
        )
        _wait_state(session, task_id, "running")
    net.stop_coordinator(kill=True)
    net.start_coordinator()
    for name in net.node_names:
        net.start_node(name)
    with net.session(progress=False) as session:
        result = session.result(task_id)
    assert len(result.nodes) == 4
    assert_describe_matches(result, lung, COLUMNS)


def test_node_dying_mid_task_gets_the_message_again_after_restart(
    net: Sandbox, lung: pd.DataFrame
) -> None:
    """A node receives the task, dies without answering, comes back: the task completes."""
    victim = net.node_names[0]
    net.signal_node(victim, signal.SIGSTOP)  # frozen: the message arrives, no reply leaves
    with net.session(progress=False) as session:
        task_id = session.submit("describe", dataset="lung", columns=COLUMNS, min_nodes=4)
        deadline = time.monotonic() + 30
        while session.status(task_id).replies < 3:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        net.signal_node(victim, signal.SIGKILL)
        net.stop_node(victim)
        net.start_node(victim)
        result = session.result(task_id)
    assert sorted(result.nodes) == sorted(net.node_names)
    assert_describe_matches(result, lung, COLUMNS)


def test_unresponsive_node_fails_the_task_naming_the_node(net: Sandbox) -> None:
    victim = net.node_names[1]
    net.signal_node(victim, signal.SIGSTOP)
    try:
        with net.session(progress=False) as session, pytest.raises(NodeUnavailable) as caught:
            session.describe(["age"], timeout=3)
    finally:
        net.signal_node(victim, signal.SIGCONT)
    assert caught.value.rule == "task.timeout"
    assert caught.value.node == victim
    assert victim in str(caught.value)


def test_silent_node_goes_offline_and_returns_after_it_wakes(net: Sandbox) -> None:
    """Heartbeats, not TCP, decide liveness: a frozen node is dropped, then rejoins."""
    victim = net.node_names[2]

    def online() -> bool:
        with net.session(progress=False) as session:
            nodes = session.nodes()
        return bool(nodes.loc[nodes["name"] == victim, "online"].item())

    def wait_until(state: bool, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while online() is not state:
            assert time.monotonic() < deadline, f"{victim} never became online={state}"
            time.sleep(0.2)

    net.signal_node(victim, signal.SIGSTOP)
    try:
        wait_until(False)
    finally:
        net.signal_node(victim, signal.SIGCONT)
    wait_until(True)


def test_a_second_process_under_the_same_name_is_refused(net: Sandbox, lung: pd.DataFrame) -> None:
    """Two processes claiming one centre would take the stream from each other forever."""
    import subprocess
    import sys

    name = net.node_names[0]
    impostor = subprocess.Popen(
        [sys.executable, "-m", "oncofed", "node", "start", str(net.node_config(name))],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    refused = threading.Event()

    def read() -> None:
        assert impostor.stdout is not None
        for line in impostor.stdout:
            lines.append(line)
            if "already connected" in line:
                refused.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # Start-up takes seconds on a loaded machine: wait for the refusal, not a fixed time.
        assert refused.wait(90), "".join(lines)
        with net.session(progress=False) as session:
            result = session.describe(COLUMNS, min_nodes=4)
            nodes = session.nodes()
    finally:
        impostor.terminate()
        impostor.wait(timeout=20)
    assert list(nodes["name"]).count(name) == 1 and nodes["online"].all()
    assert_describe_matches(result, lung, COLUMNS)
