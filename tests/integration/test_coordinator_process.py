"""The coordinator as an operator runs it: health check, JSON logs, clean shutdown."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from oncofed.errors import ExitCode


def test_health_json_logs_and_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "port"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "oncofed",
            "coordinator",
            "start",
            "--db",
            f"sqlite:///{tmp_path / 'c.db'}",
            "--listen",
            "127.0.0.1:0",
            "--ready-file",
            str(ready),
            "--log-format",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with grpc.insecure_channel(f"127.0.0.1:{ready.read_text()}") as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == ExitCode.OK
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any("coordinator listening on port" in r["message"] for r in records)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)


def test_coordinator_refuses_a_bad_database_url_in_one_line(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "oncofed", "coordinator", "start", "--db", "mysql://nowhere/x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == ExitCode.CONFIG
    assert "rule: coordinator.database" in run.stderr
    assert "Traceback" not in run.stderr
