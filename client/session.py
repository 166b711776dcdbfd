"""The researcher's session: the same class against a sandbox or a real network."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pandas as pd
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from oncofed.client.access import grpc_error
from oncofed.governance.envelope import SignedTask
from oncofed.governance.keys import Identity
from oncofed.governance.sealing import open_sealed
from oncofed.governance.tls import TlsFiles, client_channel
from oncofed.kernel.errors import (
    OncofedError,
    Param,
    QueryError,
    TaskCancelled,
    TaskFailed,
    format_validation_error,
)
from oncofed.kernel.wire import CHANNEL_OPTIONS
from oncofed.kernel.wire import oncofed_pb2 as pb
from oncofed.kernel.wire.oncofed_pb2_grpc import OperatorStub, ResearcherStub
from oncofed.tasks import (
    correlation,
    coxph,
    crosstab,
    describe,
    get_task,
    glm,
    histogram,
    kaplan_meier,
    logrank,
    quantiles,
    training,
)
from oncofed.tasks.base import TaskParams, TaskType
from oncofed.tasks.correlation import CorrelationResult
from oncofed.tasks.coxph import CoxPHResult
from oncofed.tasks.crosstab import CrosstabResult
from oncofed.tasks.describe import DescribeResult
from oncofed.tasks.glm import GLMResult
from oncofed.tasks.histogram import HistogramResult
from oncofed.tasks.kaplan_meier import KaplanMeierResult
from oncofed.tasks.logrank import LogrankResult
from oncofed.tasks.quantiles import Method, QuantilesResult
from oncofed.tasks.training.model import TrainedModel

RECONNECT_SECONDS = 60.0
R = TypeVar("R", bound=BaseModel)


class Session:
    """A connection to a coordinator, with one method per analysis.

    ``credentials`` is the researcher's own folder (identity, TLS key and
    certificate: ``oncofed pki request``); ``permit`` the id of the data permit
    the work runs under.

    >>> with Session("coord.example.org:7100", credentials="~/.oncofed/ada",
    ...              permit="lung-outcomes-2026", dataset="lung") as s:
    ...     s.describe(["age", "wt.loss"], by="sex", categories=["1", "2"]).to_frame()
    """

    def __init__(
        self,
        address: str,
        *,
        credentials: Path | str,
        permit: str | None = None,
        dataset: str | None = None,
        progress: bool = True,
        console: Console | None = None,
    ) -> None:
        self.address = address
        self.dataset = dataset
        # Every task runs under a permit; each node keeps a privacy budget per (permit, dataset).
        self.permit = permit
        self.progress = progress
        self.console = console or Console(stderr=True)
        folder = Path(credentials).expanduser()
        self.identity = Identity.load(folder)
        self._channel = client_channel(address, TlsFiles.in_directory(folder), CHANNEL_OPTIONS)
        self._researcher = ResearcherStub(self._channel)
        self._operator = OperatorStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ---- analyses -------------------------------------------------------
    # One thin method per installed task, for completion and docstrings; each
    # takes exactly its task's researcher parameters (tests/unit/test_task_interfaces.py
    # fails when they drift) and hands them to ``run``.

    def describe(
        self,
        columns: Sequence[str],
        by: str | None = None,
        *,
        categories: Sequence[str] | None = None,
        bounds: Mapping[str, tuple[float, float]] | None = None,
        dataset: str | None = None,
        min_nodes: int = 1,
        timeout: float = 120.0,
        where: str | None = None,
        dp: Mapping[str, float] | None = None,
        secure_aggregation: bool = False,
    ) -> DescribeResult:
        """Count, missing, mean, variance and standard deviation, pooled over nodes.

        ``where`` keeps rows, e.g. ``"age >= 60 and ph.ecog is not null"``.
        ``dp={"epsilon": 0.5, "delta": 1e-6}`` asks every node for a differentially
        private release; values are clamped to ``bounds`` (or the schema's).
        ``secure_aggregation=True`` (with dp) masks each node's sums so the
        coordinator sees only the totals.
        """
        return self._typed(describe.TASK, locals())

    def correlation(
        self,
        columns: Sequence[str],
        *,
        bounds: Mapping[str, tuple[float, float]] | None = None,
        dataset: str | None = None,
        min_nodes: int = 1,
        timeout: float = 120.0,
        where: str | None = None,
        dp: Mapping[str, float] | None = None,
    ) -> CorrelationResult:
        """Covariance and correlation matrices over complete cases, as np.cov / np.corrcoef.

        With ``dp={"epsilon": 0.5, "delta": 1e-6}`` every node releases noisy
        sums of values clamped to ``bounds`` (or the schema's); the result
        states each entry's noise.
        """
        return self._typed(correlation.TASK, locals())

    def crosstab(
        self,
        row: str,
        col: str,
        *,
        row_categories: Sequence[str] | None = None,
        col_categories: Sequence[str] | None = None,
        correction: bool = True,
        dataset: str | None = None,
        min_nodes: int = 1,
        timeout: float = 120.0,
        where: str | None = None,
        dp: Mapping[str, float] | None = None,
        secure_aggregation: bool = False,
    ) -> CrosstabResult:
        """Counts on agreed categories and scipy's chi-square test of independence.

        With ``dp=`` the counts are noisy and the test is not computed; with
        ``secure_aggregation=True`` the coordinator sees only the total counts.
        """
        return self._typed(crosstab.TASK, locals())

    def histogram(
        self,
        column: str,
        bins: int | Sequence[float],
        *,
        range: tuple[float, float] | None = None,
        dataset: str | None = None,
        min_nodes: int = 1,
        timeout: float = 120.0,
        where: str | None = None,
        dp: Mapping[str, float] | None = None,
        secure_aggregation: bool = False,
    ) -> HistogramResult:
        """Counts on agreed edges (or ``bins`` equal bins over ``range``), as numpy.histogram.

        With ``dp=`` every count carries noise (and may be negative); with
        ``secure_aggregation=True`` the coordinator sees only the total counts.
        """
        return self._typed(histogram.TASK, locals())

    def quantiles(
        self,
        column: str,
        q: float | Sequence[float] = (0.25, 0.5, 0.75),
        *,
        lower: float,
        upper: float,
        tolerance: float | None = None,
        method: Method = "linear",
        dataset: str | None = None,
        min_nodes: int = 1,
        timeout: float = 120.0,
        where: str | None = None,
        dp: Mapping[str, float] | None = None,
        secure_aggregation: bool = False,
    ) -> QuantilesResult:
        """numpy.quantile(pooled, q, method=method) within a stated bound, no value leaving a node.

        ``lower`` and ``upper`` bound the search and must be agreed, not read
        from the data; ``tolerance`` (default (upper - lower) / 1000) is the
        largest absolute error accepted. With ``dp=`` each node releases one
        noisy histogram on the grid instead, and no error bound is stated;
        ``secure_aggregation=True`` (with dp) masks that histogram.
        """
        return self._typed(quantiles.TASK, locals())

    def glm(
        self,
        formula: str,
        family: str = "gaussian",
        *,
        max_iter: int | None = None,
        tol: float = 1e-8,
        rtol: float = 0.0,
        bounds: Mapping[str, tuple[float, float]] | None = None,
        dataset: str | None = None,
        min_nodes: int = 1,
        timeout: float = 120.0,
        where: str | None = None,
        dp: Mapping[str, float] | None = None,
    ) -> GLMResult:
        """statsmodels' ``glm(formula, data, family).fit()`` on the pooled rows, by federated IRLS.

        ``family`` is "gaussian" (identity link), "binomial" (logit) or
        "poisson" (log), e.g. ``glm("status ~ age + C(sex) + ph.karno", "binomial")``.
        IRLS stops when the deviance changes by at most ``tol + rtol * deviance``.
        With ``dp={"epsilon": 1.0}`` (the whole fit's loss at each node) the nodes
        release noisy sufficient statistics or Newton steps of values clamped to
        ``bounds`` (or the schema's); standard errors include the noise.
        """
        return self._typed(glm.TASK, locals())

    def kaplan_meier(
        self,
        duration: str,
        event: str,
        by: str | None = None,
        *,
        categories: Sequence[str] | None = None,
        grid: float | None = None,
        time_points: Sequence[float] | None = None,
        exact_times: bool = False,
        alpha: float = 0.05,
        dataset: str | None = None,
        min_nodes: int = 1,
        timeout: float = 120.0,
        where: str | None = None,
        dp: Mapping[str, float] | None = None,
    ) -> KaplanMeierResult:
        """lifelines' ``KaplanMeierFitter`` on the pooled rows, per agreed group of ``by``.

        Agree a time grid: ``grid=30`` rounds durations up to multiples of 30,
        ``time_points=[...]`` moves them to the next agreed point, and
        ``exact_times=True`` works only where every node's policy allows it.
        ``event`` is a 0/1 column (1 = event observed).
        """
        return self._typed(kaplan_meier.TASK, locals())

    def logrank(
        self,
        duration: str,
        event: str,
        by: str,
        *,
        categories: Sequence[str] | None = None,
        grid: float | None = None,
        time_points: Sequence[float] | None = None,
        exact_times: bool = False,
        dataset: str | None = None,
        min_nodes: int = 1,
        timeout: float = 120.0,
        where: str | None = None,
        dp: Mapping[str, float] | None = None,
    ) -> LogrankResult:
        """``lifelines.statistics.multivariate_logrank_test`` across the agreed groups of ``by``.

        The time grid is agreed as for :meth:`kaplan_meier`. With ``dp=`` (and
        ``time_points``) the counts are noisy: use ``noise_adjusted_p_value``.
        """
        return self._typed(logrank.TASK, locals())

    def coxph(
        self,
        duration: str,
        event: str,
        covariates: Sequence[str] | str,
        *,
        strata: str | Sequence[str] = (),
        strata_categories: Mapping[str, Sequence[str]] | None = None,
        grid: float | None = None,
        time_points: Sequence[float] | None = None,
        exact_times: bool = False,
        alpha: float = 0.05,
        max_iter: int | None = None,
        tol: float = 1e-12,
        concordance: bool = True,
        concordance_bins: int = 200,
        bounds: Mapping[str, tuple[float, float]] | None = None,
        dataset: str | None = None,
        min_nodes: int = 1,
        timeout: float = 120.0,
        where: str | None = None,
        dp: Mapping[str, float] | None = None,
    ) -> CoxPHResult:
        """``lifelines.CoxPHFitter`` (Efron ties) on the pooled rows, by federated Newton-Raphson.

        ``covariates`` is a list of numeric columns or a formula right-hand side,
        e.g. ``"age + C(sex) + ph.ecog"``. ``strata`` columns need agreed levels
        (``strata_categories={"ph.ecog": ["0", "1", "2", "3"]}`` or the schema's).
        The time grid is agreed as for :meth:`kaplan_meier`. Newton-Raphson stops
        when the Newton decrement is below ``tol`` (then takes one last step).
        With ``dp={"epsilon": 1.0}`` (the whole fit's loss at each node, Breslow
        ties on the agreed grid) covariates are clamped to ``bounds`` (or the
        schema's) and no concordance is computed.
        """
        return self._typed(coxph.TASK, locals())

    def train(
        self,
        features: Sequence[str] | str,
        label: str | None = None,
        *,
        model: str = "logistic",
        duration: str | None = None,
        event: str | None = None,
        hidden: Sequence[int] | None = None,
        strategy: str = "fedavg",
        rounds: int = 10,
        fraction: float = 1.0,
        local_epochs: int = 1,
        batch_size: int = 32,
        learning_rate: float = 0.1,
        proximal_mu: float = 0.1,
        test_fraction: float = 0.2,
        evaluate_every: int = 1,
        scaling: str = "describe",
        seed: int = 0,
        dataset: str | None = None,
        min_nodes: int = 1,
        timeout: float = 600.0,
        where: str | None = None,
        dp: Mapping[str, float] | None = None,
        secure_aggregation: bool = False,
    ) -> TrainedModel:
        """Train a model across the nodes with a Flower strategy; returns the trained model.

        ``features`` is a list of numeric columns or a right-hand side such as
        ``"age + C(grade)"``. Classifiers (``logistic``, ``mlp``) take ``label``;
        the survival model ``cox_mlp`` takes ``duration`` and ``event``.
        ``strategy`` is fedavg, fedprox (``proximal_mu`` weighs the proximal
        term) or fedadam; each node holds out ``test_fraction`` of its rows to
        evaluate on every ``evaluate_every`` rounds.
        ``dp={"epsilon": 3, "delta": 1e-5}`` trains with DP-SGD at every node,
        the whole run costing at most that loss there. ``secure_aggregation``
        masks every update, so the coordinator sees only each round's total.
        ``model.predict(df)`` gives classes (or log risks); ``predict_proba(df)``
        gives P(label = 1).
        """
        return self._typed(training.TASK, locals())

    # ---- generic task API ------------------------------------------------

    def run(self, task: str, /, **params: Any) -> BaseModel:
        """Run any installed task: validate, sign, submit, wait; its typed result.

        ``params`` are the task's parameters (``oncofed query TASK --help``
        lists them); they are checked against the task's declaration before
        anything is signed or sent.
        """
        result: BaseModel = self._typed(get_task(task), params)
        return result

    def submit(self, task: str, /, **params: Any) -> str:
        """Validate, sign with this researcher's own key, submit under the permit; the task id."""
        return self._submit(get_task(task), params)

    def request(self, task: str, /, **params: Any) -> TaskParams:
        """The validated request this session would sign for ``task`` (nothing is sent)."""
        return self._request(get_task(task), params)

    def result(self, task_id: str) -> BaseModel:
        """Wait for an earlier submitted task and return its typed result."""
        task = get_task(self.status(task_id).task_type)
        result: BaseModel = task.result.model_validate_json(self.wait(task_id))
        return result

    def _typed(self, task: TaskType[Any, R], arguments: Mapping[str, Any]) -> R:
        params = {name: value for name, value in arguments.items() if name != "self"}
        return task.result.model_validate_json(self.wait(self._submit(task, params)))

    def _submit(self, task: TaskType[Any, Any], params: Mapping[str, Any]) -> str:
        request = self._request(task, params)
        assert self.permit is not None, "_request refuses a session without a permit"
        signed = SignedTask.create(self.identity, task.name, request.model_dump_json(), self.permit)
        message = pb.SubmitRequest(signed_task_json=signed.model_dump_json())
        with self._rpc():
            return str(self._researcher.Submit(message).task_id)

    def _request(self, task: TaskType[Any, Any], params: Mapping[str, Any]) -> TaskParams:
        if self.permit is None:
            raise QueryError(
                "no permit given",
                rule="session.permit",
                fix=f"name the data permit you work under: {Param('permit', 'ID')}, the id of "
                "a permit naming you",
            )
        if "study" in params:
            raise QueryError(
                "the study is the session's permit",
                rule="task.params",
                fix="leave out study=; create the Session with the permit to work under",
            )
        fields = task.params.model_fields
        # None stands for "the task's default" where that default is something else.
        given = {
            name: value
            for name, value in params.items()
            if value is not None or name not in fields or fields[name].get_default() is None
        }
        given["dataset"] = self._dataset(given.get("dataset"))
        try:
            request: TaskParams = task.params.model_validate({**given, "study": self.permit})
        except ValidationError as exc:
            raise QueryError(
                f"invalid parameters for {task.name!r}: {format_validation_error(exc)}",
                rule="task.params",
                fix=f"see `oncofed query {task.name.replace('_', '-')} --help` for the parameters",
            ) from None
        return request

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
            sealed = str(result.sealed_result)
            return open_sealed(sealed, self.identity, context=task_id).decode()
        if result.state == "cancelled":
            raise TaskCancelled(f"task {task_id} was cancelled", rule="task.cancelled")
        if result.error_json:
            raise OncofedError.from_json(result.error_json)
        raise TaskFailed(f"task {task_id} ended in state {result.state}", rule="task.state")

    def cancel(self, task_id: str) -> str:
        with self._rpc():
            return str(self._researcher.Cancel(pb.TaskRef(task_id=task_id)).state)

    def node_infos(self) -> list[pb.NodeInfo]:
        """Nodes known to the coordinator, each with the dataset schemas it declared."""
        with self._rpc():
            return list(self._operator.ListNodes(pb.Empty()).nodes)

    def nodes(self) -> pd.DataFrame:
        """Nodes known to the coordinator: name, version, online, datasets offered."""
        return pd.DataFrame(
            [
                {
                    "name": n.name,
                    "node_id": n.node_id,
                    "version": n.version,
                    "online": n.online,
                    "datasets": sorted(json.loads(n.datasets_json or "{}")),
                }
                for n in self.node_infos()
            ],
            columns=["name", "node_id", "version", "online", "datasets"],
        )

    # ---- plumbing --------------------------------------------------------

    def _dataset(self, dataset: str | None) -> str:
        chosen = dataset or self.dataset
        if not chosen:
            raise QueryError(
                "no dataset given",
                rule="session.dataset",
                fix=f"name it: {Param('dataset', 'NAME')}, for one analysis or the whole Session",
            )
        return chosen

    @contextmanager
    def _rpc(self) -> Iterator[None]:
        try:
            yield
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: grpc.RpcError) -> OncofedError:
        return grpc_error(exc, self.address)

    @contextmanager
    def _progress(self) -> Iterator[Any]:
        # A progress display on a console that cannot redraw (output to a file or a pipe)
        # shows no progress, only a blank line where the display stopped.
        live = self.console.is_terminal or self.console.is_jupyter
        if not (self.progress and live):
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
                    detail="" if update.detail in IDLE_DETAILS else update.detail,
                )

            yield show


# A running task's detail is a progress line only once its server function sets one.
IDLE_DETAILS = ("running", "waiting to start")


def _code(exc: grpc.RpcError) -> grpc.StatusCode | None:
    return exc.code() if isinstance(exc, grpc.Call) else None


__all__ = ["IDLE_DETAILS", "Session"]
