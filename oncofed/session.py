"""The researcher's session: the same class against a sandbox or a real network."""

from __future__ import annotations

import getpass
import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import grpc
import pandas as pd
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from oncofed.errors import (
    CoordinatorUnavailable,
    OncofedError,
    TaskCancelled,
    TaskFailed,
)
from oncofed.tasks import get_task
from oncofed.tasks.describe import DescribeResult
from oncofed.tasks.filters import parse_filter
from oncofed.wire import CHANNEL_OPTIONS
from oncofed.wire import oncofed_pb2 as pb
from oncofed.wire.oncofed_pb2_grpc import OperatorStub, ResearcherStub

RECONNECT_SECONDS = 60.0


class Session:
    """A connection to a coordinator, with one method per analysis.

    >>> with Session("coordinator.example.org:7100", dataset="lung") as s:
    ...     s.describe(["age", "wt.loss"], by="sex", categories=["1", "2"]).to_frame()
    """

    def __init__(
        self,
        address: str,
        *,
        dataset: str | None = None,
        researcher: str | None = None,
        progress: bool = True,
        console: Console | None = None,
    ) -> None:
        self.address = address
        self.dataset = dataset
        self.researcher = researcher or getpass.getuser()
        self.progress = progress
        self.console = console or Console(stderr=True)
        self._channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._researcher = ResearcherStub(self._channel)
        self._operator = OperatorStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ---- analyses -------------------------------------------------------

    def describe(
        self,
        columns: Sequence[str],
        by: str | None = None,
        *,
        categories: Sequence[str] | None = None,
        dataset: str | None = None,
        min_nodes: int = 1,
        timeout: float = 120.0,
        where: str | None = None,
    ) -> DescribeResult:
        """Count, missing, mean, variance and standard deviation, pooled over nodes.

        ``where`` keeps rows, e.g. ``"age >= 60 and ph.ecog is not null"``.
        """
        params: dict[str, Any] = {
            "dataset": self._dataset(dataset),
            "where": _filter(where),
            "columns": list(columns),
            "by": by,
            "categories": list(categories) if categories is not None else None,
            "min_nodes": min_nodes,
            "timeout": timeout,
        }
        result = self.run("describe", params)
        assert isinstance(result, DescribeResult)
        return result

    # ---- generic task API ------------------------------------------------

    def run(self, task_type: str, params: dict[str, Any]) -> BaseModel:
        """Submit, wait with a progress display, and return the task's typed result."""
        task = get_task(task_type)
        task_id = self.submit(task_type, params)
        result: BaseModel = task.result.model_validate_json(self.wait(task_id))
        return result

    def result(self, task_id: str) -> BaseModel:
        """Wait for an earlier submitted task and return its typed result."""
        task = get_task(self.status(task_id).task_type)
        result: BaseModel = task.result.model_validate_json(self.wait(task_id))
        return result

    def submit(self, task_type: str, params: dict[str, Any]) -> str:
        request = pb.SubmitRequest(
            task_type=task_type, params_json=json.dumps(params), researcher=self.researcher
        )
        with self._rpc():
            return str(self._researcher.Submit(request).task_id)

    def status(self, task_id: str) -> pb.TaskStatus:
        with self._rpc():
            first: pb.TaskStatus = next(iter(self._researcher.Watch(pb.TaskRef(task_id=task_id))))
            return first

    def wait(self, task_id: str) -> str:
        """Block until the task ends; its result JSON, or its typed error raised."""
        deadline = time.monotonic() + RECONNECT_SECONDS
        with self._progress() as show:
            while True:
                try:
                    for update in self._researcher.Watch(pb.TaskRef(task_id=task_id)):
                        show(update)
                        deadline = time.monotonic() + RECONNECT_SECONDS
                    break
                except grpc.RpcError as exc:
                    # A restarting coordinator resumes the task; keep watching.
                    if _code(exc) != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                        raise self._error(exc) from None
                    time.sleep(0.5)
        with self._rpc():
            result = self._researcher.Result(pb.TaskRef(task_id=task_id))
        if result.state == "succeeded":
            return str(result.result_json)
        if result.state == "cancelled":
            raise TaskCancelled(f"task {task_id} was cancelled", rule="task.cancelled")
        if result.error_json:
            raise OncofedError.from_json(result.error_json)
        raise TaskFailed(f"task {task_id} ended in state {result.state}", rule="task.state")

    def cancel(self, task_id: str) -> str:
        with self._rpc():
            return str(self._researcher.Cancel(pb.TaskRef(task_id=task_id)).state)

    def nodes(self) -> pd.DataFrame:
        """Nodes known to the coordinator: name, version, online, datasets offered."""
        with self._rpc():
            listing = self._operator.ListNodes(pb.Empty())
        return pd.DataFrame(
            [
                {
                    "name": n.name,
                    "node_id": n.node_id,
                    "version": n.version,
                    "online": n.online,
                    "datasets": sorted(json.loads(n.datasets_json or "{}")),
                }
                for n in listing.nodes
            ],
            columns=["name", "node_id", "version", "online", "datasets"],
        )

    # ---- plumbing --------------------------------------------------------

    def _dataset(self, dataset: str | None) -> str:
        chosen = dataset or self.dataset
        if not chosen:
            raise OncofedError(
                "no dataset given",
                rule="session.dataset",
                fix="pass dataset=... or create the Session with dataset=...",
            )
        return chosen

    @contextmanager
    def _rpc(self) -> Iterator[None]:
        try:
            yield
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: grpc.RpcError) -> OncofedError:
        code = _code(exc)
        if code == grpc.StatusCode.UNAVAILABLE:
            return CoordinatorUnavailable(
                f"cannot reach the coordinator at {self.address}",
                rule="session.connect",
                fix="check the address and that the coordinator is running",
            )
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        return OncofedError.from_json(details or str(code))

    @contextmanager
    def _progress(self) -> Iterator[Any]:
        if not self.progress:
            yield lambda _update: None
            return
        columns = (
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} node replies"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[detail]}"),
        )
        with Progress(*columns, console=self.console, transient=True) as bar:
            handle = bar.add_task("task", total=None, detail="")

            def show(update: pb.TaskStatus) -> None:
                bar.update(
                    handle,
                    description=f"{update.task_type} [{update.state}]",
                    completed=update.replies,
                    total=update.expected or None,
                    detail=update.detail if update.state != "running" else "",
                )

            yield show


def _filter(where: str | None) -> dict[str, Any] | None:
    """Parsed here so a typo fails before anything is sent."""
    return None if where is None else parse_filter(where).model_dump(mode="json")


def _code(exc: grpc.RpcError) -> grpc.StatusCode | None:
    return exc.code() if isinstance(exc, grpc.Call) else None


__all__ = ["Session"]
