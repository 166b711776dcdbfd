"""Consoles under test: in-process (Starlette's TestClient), or real `oncofed console` processes."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.testclient import TestClient

from oncofed.client.console import ConsoleKeys, ConsoleSettings, create_app

START_SECONDS = 60


@contextmanager
def console_client(settings: ConsoleSettings) -> Iterator[tuple[TestClient, ConsoleKeys]]:
    """A signed-in client of a console (its one-time token already redeemed), and its keys.

    Forms need ``keys.csrf()`` in their ``csrf`` field, as the pages' own forms carry it.
    """
    keys = ConsoleKeys()
    base = "http://127.0.0.1:8000" + keys.root  # the console lives under its random root
    with TestClient(create_app(settings, keys), base_url=base) as client:
        signed_in = client.get(f"/?token={keys.token}", follow_redirects=False)
        assert signed_in.status_code == 307, signed_in.text
        yield client, keys


class ConsoleProcess:
    """`oncofed console` as its user starts it: a real process, its link read from its output."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "oncofed", "console", "--no-browser", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "COLUMNS": "200", **(env or {})},
        )
        self.output: list[str] = []
        found: queue.Queue[str] = queue.Queue()

        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                self.output.append(line)
                if line.startswith("http://127.0.0.1:"):
                    found.put(line.strip())

        threading.Thread(target=read, daemon=True).start()
        try:
            self.url = found.get(timeout=START_SECONDS)
        except queue.Empty:
            self.stop()
            raise AssertionError("the console printed no link:\n" + "".join(self.output)) from None
        self.base = self.url.split("/?", 1)[0]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
