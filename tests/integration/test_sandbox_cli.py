"""`oncofed sandbox` keeps a network up from one file until Ctrl-C."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from oncofed.client.session import Session
from oncofed.kernel.errors import ExitCode


def test_sandbox_command_serves_until_interrupted(tmp_path: Path, lung: pd.DataFrame) -> None:
    data = tmp_path / "lung.csv"
    lung.to_csv(data, index=False)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "oncofed",
            "sandbox",
            "--data",
            str(data),
            "--split-by",
            "centre",
            "--dataset",
            "lung",
            "--release",
            "exact",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        address = credentials = ""
        printed: list[str] = []
        deadline = time.monotonic() + 120
        while not (address and credentials):
            line = process.stdout.readline()
            assert line or process.poll() is None, process.stderr.read() if process.stderr else ""
            match = re.search(r"coordinator at (127\.0\.0\.1:\d+)", line)
            address = match.group(1) if match else address
            printed.append(line)
            match = re.search(r"credentials='([^']+)'", line)
            credentials = match.group(1) if match else credentials
            assert time.monotonic() < deadline
        with Session(
            address, credentials=credentials, permit="sandbox", dataset="lung", progress=False
        ) as session:
            result = session.describe(["age"], min_nodes=4)
        # Exact answers use the records complete on every declared column.
        assert result.to_frame().loc["age", "count"] == len(lung.dropna())
        assert "release exact" in " ".join(" ".join(printed).split())  # however rich wrapped it
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=60)
    assert code == ExitCode.OK
