"""The coordinator as an operator runs it: health check, JSON logs, clean shutdown."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc

from oncofed.governance.tls import TlsFiles, client_channel
from oncofed.kernel.errors import ExitCode
from tests.pki import make_network, start_coordinator


def test_health_json_logs_and_sigterm(tmp_path: Path) -> None:
    make_network(tmp_path, {"coordinator": "coordinator", "ops": "admin"})
    process, address = start_coordinator(tmp_path, "--log-format", "json")
    try:
        with client_channel(address, TlsFiles.in_directory(tmp_path / "ops"), []) as channel:
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
    make_network(tmp_path, {"coordinator": "coordinator"})
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "oncofed",
            "coordinator",
            "start",
            "--db",
            "mysql://nowhere/x",
            "--credentials",
            str(tmp_path / "coordinator"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == ExitCode.CONFIG
    assert "rule: coordinator.database" in run.stderr
    assert "Traceback" not in run.stderr
