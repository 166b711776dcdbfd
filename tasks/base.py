"""The task contract: what a task type is, and the helpers its server side uses.

A task type bundles its pydantic parameters, its node-side handlers (run inside
the node's ClientApp, behind the node's mods) and its server-side function
(which drives a Flower ``Grid``). The runtime knows tasks only through this
contract, so adding a task never touches the node or the coordinator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, ClassVar, Generic, Literal, Protocol, TypeVar

import pandas as pd
from flwr.app import RecordDict
from flwr.serverapp import Grid
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from rich.console import RenderableType

from oncofed.governance.permit_check import TaskKind
from oncofed.kernel.errors import Hole, NodeRefusal, Param, QueryError, TaskFailed
from oncofed.kernel.schema import NAME_PATTERN, DatasetSchema
from oncofed.privacy.accounting import PRIVACY_RECORD, PrivacyLoss
from oncofed.privacy.disclosure import check_subset
from oncofed.privacy.dp import DPRequest
from oncofed.privacy.ledger import PrivacyLedger
from oncofed.privacy.policy import DatasetPrivacy, NodePolicy
from oncofed.privacy.release import Release, node_of
from oncofed.tasks.filters import (
    MAX_DEPTH,
    Filter,
    check_filter,
    columns_of,
    depth,
    evaluate,
    parse_filter,
)


def _ordered_bounds(bounds: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    for column, (lo, hi) in bounds.items():
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"bounds of {column!r} must be finite with lo < hi")
    return bounds


PublicBounds = Annotated[dict[str, tuple[float, float]], AfterValidator(_ordered_bounds)]
"""Public (lo, hi) per column for a DP release, known without reading the data."""


class Bounded(Protocol):
    """A request that may state public bounds per column."""

    @property
    def bounds(self) -> Mapping[str, tuple[float, float]]: ...


def round_down(value: float, digits: int = 3) -> float:
    """``value`` rounded down to ``digits`` significant digits: a suggested loss that still fits."""
    places = digits - 1 - math.floor(math.log10(value))
    return round(math.floor(value * 10.0**places) / 10.0**places, places)


def public_bounds(params: Bounded, local: LocalDataset, column: str) -> tuple[float, float]:
    """The public clamping range of a column: the schema's, else the request's (a boolean
    column's type bounds it)."""
    spec = local.schema.columns[column]
    bounds = spec.bounds or params.bounds.get(column)
    if bounds is None and spec.type == "boolean":
        return 0.0, 1.0
    if bounds is None:
        raise QueryError(
            f"a DP release of {column!r} needs public bounds to clamp its values to",
            rule="privacy.bounds_required",
            node=local.node_name,
            fix=f"pass {Param('bounds', {column: (Hole('lo'), Hole('hi'))})} from domain "
            "knowledge, or ask the node operator to declare bounds for the column in the node "
            "schema",
            column=column,
        )
    return float(bounds[0]), float(bounds[1])


# "factor": a formula's categorical factor; check_formula checks its levels, any type will do.
ColumnRole = Literal["numeric", "group", "filter", "factor"]

P = TypeVar("P", bound="TaskParams")
R = TypeVar("R", bound=BaseModel)
RL = TypeVar("RL", bound="Release")


@dataclass(frozen=True)
class WrittenAs:
    """Marks a structured parameter a researcher writes as text, with an example.

    The field's validator parses the text (a ``where`` filter, a model
    formula), so the session and the command line pass the text unchanged.
    """

    example: str


class TaskParams(BaseModel):
    """Parameters every task has. Subclasses add their own, all validated.

    A task's Python method, its ``oncofed query`` command and its reference
    documentation all come from these fields (``researcher_interface``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = Field(min_length=1, description="Dataset name as the nodes offer it.")
    min_nodes: int = Field(default=1, ge=1, description="Wait until this many nodes are online.")
    timeout: float = Field(
        default=120.0, gt=0, le=86_400, description="Seconds to wait for nodes and replies."
    )
    where: Annotated[Filter | None, WrittenAs('"age >= 60 and ph.ecog is not null"')] = Field(
        default=None, description="Rows to include: comparisons joined by and / or / not."
    )
    study: str = Field(
        default="default",
        pattern=NAME_PATTERN,
        description="The permit the work runs under (its id); each node keeps a privacy "
        "budget per permit and dataset, and refuses a study that is not the signed permit's.",
    )
    dp: DPRequest | None = Field(
        default=None,
        description="Differential privacy for this release: the loss it may cost at each node.",
    )
    secure_aggregation: bool = Field(
        default=False,
        description="Mask every node's numbers so the coordinator sees only their totals.",
    )

    @field_validator("where", mode="before")
    @classmethod
    def _parse_where(cls, where: object) -> object:
        return parse_filter(where) if isinstance(where, str) else where

    @field_validator("where")
    @classmethod
    def _shallow_where(cls, where: Filter | None) -> Filter | None:
        if where is not None and depth(where) > MAX_DEPTH:
            raise ValueError(f"the filter nests deeper than {MAX_DEPTH} levels")
        return where

    @model_validator(mode="after")
    def _secure_sum_supported(self) -> TaskParams:
        if self.secure_aggregation and not self.secure_sum_supported():
            raise ValueError(
                f"{type(self).__name__} does not support secure_aggregation: its replies do not "
                "simply add across nodes"
            )
        return self

    def secure_sum_supported(self) -> bool:
        return self.SECURE_SUM

    SECURE_SUM: ClassVar[bool] = False
    """Whether this task's replies can add across nodes (so ``secure_aggregation`` is offered);
    ``secure_sum_supported`` says whether a given request's do."""

    DP: ClassVar[bool] = False
    """Whether this task has a differentially private release (so ``dp`` is offered)."""

    SERVER_STATE: ClassVar[frozenset[str]] = frozenset()
    """Fields the server function fills in between rounds (current coefficients, probes).

    Every other field must reach each node exactly as the researcher signed it;
    the node's permit check compares them.
    """

    @classmethod
    def researcher_interface(cls) -> tuple[str, ...]:
        """The fields a researcher sets, the task's own first.

        Not offered: the server's round state, the study (the session's
        permit), ``dp`` where the task has no DP release and
        ``secure_aggregation`` where its replies never add.
        """
        hidden = set(cls.SERVER_STATE) | {"study"}
        if not cls.DP:
            hidden.add("dp")
        if not cls.SECURE_SUM:
            hidden.add("secure_aggregation")
        common = list(TaskParams.model_fields)
        own = [name for name in cls.model_fields if name not in common]
        return tuple(name for name in [*own, *common] if name not in hidden)

    def request_for(self, task: str) -> TaskParams | None:
        """The request this task sends as a step of its own to ``task`` (None: it sends none).

        Nodes accept another task's message under this task's signature only
        when it equals what this returns, so a task that composes another
        (training standardises through ``describe``) builds that request here.
        """
        return None

    def filter_among(self, cohorts: Mapping[str, str]) -> bool:
        """Whether ``where`` is absent or means the same as one of these named filters.

        Exact answers take rows only from subsets the permit names: a free
        filter lets two overlapping subsets differ by one patient (a tracker).
        """
        if self.where is None:
            return True
        for text in cohorts.values():
            try:
                if parse_filter(text) == self.where:
                    return True
            except QueryError:
                continue  # a cohort that does not parse matches no request
        return False

    def researcher_fields(self) -> dict[str, Any]:
        """The request as the researcher chose it: everything but the server's state."""
        return self.model_dump(mode="json", exclude=set(self.SERVER_STATE))

    def release_loss(self) -> PrivacyLoss | None:
        """The loss one reply to this request will cost, known before it is computed.

        The node refuses up front a request its budget cannot pay for. A task
        whose loss per reply depended on the node would return None and state
        the loss in the reply instead (the node then checks it there).
        """
        return self.dp.loss() if self.dp is not None else None

    def release_too_large(self, epsilon: float, privacy: DatasetPrivacy, node: str) -> NodeRefusal:
        """The refusal of a reply costing ``epsilon``, above what the node allows one reply.

        Its fix is the largest ``dp`` epsilon whose reply fits, found through
        ``release_loss`` at the node's delta (the figure the node compares),
        so it holds for tasks that spread ``dp`` over several steps too.
        """
        most = privacy.max_epsilon_per_release
        fix = "ask the node's operator to raise max_epsilon_per_release"
        spread = ""
        if self.dp is not None:
            dp = self.dp
            own = self.release_loss()
            if own is not None and own.epsilon(dp.delta) < 0.99 * dp.epsilon:
                spread = f"; dp epsilon {dp.epsilon:g} is the whole task's, spread over its steps"

            def costs(asked: float) -> float:
                loss = self.model_copy(update={"dp": dp.model_copy(update={"epsilon": asked})})
                return (loss.release_loss() or PrivacyLoss.zero()).epsilon(privacy.delta)

            lo, hi = dp.epsilon * 1e-3, dp.epsilon  # the loss grows with the epsilon asked
            while hi / lo > 1.001:
                mid = math.sqrt(lo * hi)
                lo, hi = (mid, hi) if costs(mid) <= most else (lo, mid)
            fits = round_down(lo)
            if costs(fits) <= most:
                others = dp.model_dump(exclude_defaults=True, exclude={"epsilon"})
                fix = f"ask for {Param('dp', {'epsilon': fits, **others})}, or {fix}"
        return NodeRefusal(
            f"one release may cost at most epsilon {most:g} at this node; this one would cost "
            f"{epsilon:.3g}{spread}",
            rule="privacy.max_epsilon_per_release",
            node=node,
            fix=fix,
            setting=most,
        )

    def reads_rows(self, action: str) -> bool:
        """Whether the reply to ``action`` is computed from rows (not from the schema alone).

        A reply that is not needs no DP mechanism on a DP dataset.
        """
        return True

    def declared_levels(self) -> dict[str, tuple[str, ...]]:
        """Category lists the request itself states, by column (others use the schema's)."""
        return {}

    def required_columns(self) -> dict[str, ColumnRole]:
        """Columns the request reads, with the role each plays (checked by every node)."""
        return dict.fromkeys(sorted(columns_of(self.where)), "filter") if self.where else {}

    def check_schema(self, schema: DatasetSchema, node: str) -> None:
        """Task-specific checks against a node's schema, run before any row is read.

        The node has already checked that every ``required_columns`` column
        exists in its role; tasks with formulas or other structure add theirs.
        """
        if self.where is not None:
            check_filter(self.where, schema, node)


@dataclass(frozen=True)
class LocalDataset:
    """A node's view of one of its datasets, handed to node-side handlers."""

    node_name: str
    name: str
    schema: DatasetSchema
    frame: pd.DataFrame
    policy: NodePolicy = field(default_factory=NodePolicy)

    def complete_on(self, columns: Iterable[str]) -> LocalDataset:
        """The dataset cut to the records with a value in every one of ``columns``.

        An exact request's row set must not depend on which columns it names:
        otherwise adding a column with one missing value to an analysis drops
        that one patient, and the difference of two exact answers is theirs.
        """
        present = [column for column in columns if column in self.frame.columns]
        if not present:
            return self
        return replace(self, frame=self.frame.dropna(subset=present))


class LocalDatasets(Protocol):
    """What a node offers to handlers: its name and its datasets by name."""

    @property
    def node_name(self) -> str: ...

    @property
    def policy(self) -> NodePolicy: ...

    @property
    def ledger(self) -> PrivacyLedger: ...

    def schema(self, dataset: str) -> DatasetSchema | None: ...

    def load(self, dataset: str) -> LocalDataset: ...


def selected_rows(params: TaskParams, local: LocalDataset) -> pd.DataFrame:
    """The rows a request's ``where`` keeps (all rows without one).

    An exact release must pass the subset and complement rules here, before
    any statistic is computed; a DP release skips them (see privacy/disclosure.py).
    """
    frame = (
        local.frame
        if params.where is None
        else local.frame.loc[evaluate(params.where, local.frame)]
    )
    if params.dp is None:
        check_subset(len(frame), len(local.frame), local.policy, local.node_name)
    return frame


NodeHandler = Callable[[P, LocalDataset], Release]
ModelHandler = Callable[[P, LocalDataset, RecordDict], Release]
"""Handles Flower's ``train`` / ``evaluate`` messages: also gets the message content (the model)."""
ModelMessage = Literal["train", "evaluate"]


class DPReport(BaseModel):
    """What a DP result cost and how noisy it is, so a researcher can form intervals."""

    mechanism: str
    epsilon: dict[str, float] = Field(description="Loss charged at each node, at delta.")
    delta: float
    noise_std: dict[str, float] = Field(
        description="Standard deviation of the noise in each released total (all nodes added)."
    )


def dp_report(replies: Mapping[int, RecordDict]) -> DPReport | None:
    """The nodes' privacy records combined; None when no node added DP noise.

    Independent noise adds across nodes, so a total's noise variance is the
    sum of the nodes' scales squared.
    """
    records = {
        node_id: content.config_records[PRIVACY_RECORD]
        for node_id, content in replies.items()
        if PRIVACY_RECORD in content.config_records
    }
    if not records:
        return None
    variance: dict[str, float] = {}
    epsilon: dict[str, float] = {}
    for node_id, record in sorted(records.items()):
        meta = replies[node_id].config_records.get("meta")
        name = str(meta["node"]) if meta is not None and "node" in meta else str(node_id)
        epsilon[name] = float(str(record["epsilon"]))
        for key, value in record.items():
            if key.startswith("scale."):
                quantity = key.removeprefix("scale.")
                variance[quantity] = variance.get(quantity, 0.0) + float(str(value)) ** 2
    first = next(iter(records.values()))
    return DPReport(
        mechanism=str(first["mechanism"]),
        epsilon=epsilon,
        delta=float(str(first["delta"])),
        noise_std={quantity: math.sqrt(v) for quantity, v in sorted(variance.items())},
    )


def released(replies: Mapping[int, RecordDict], kind: type[RL]) -> list[tuple[str, RL]]:
    """Each reply's typed release with the node it came from, in node order.

    A masked total (secure aggregation) is one entry naming all its nodes.
    """
    try:
        return sorted(((node_of(c), kind.from_content(c)) for c in replies.values()), key=_first)
    except (ValueError, KeyError) as exc:
        raise TaskFailed(
            f"a node did not reply with the {kind.wire_name()} this step expects",
            rule="task.protocol",
            fix="run the same oncofed version on every node and on the coordinator",
        ) from exc


def _first(pair: tuple[str, Release]) -> str:
    return pair[0]


@dataclass(frozen=True)
class TaskType(Generic[P, R]):
    """One federated analysis, declared once.

    Its parameters, node handlers, server function and result; how a terminal
    shows the result; and which parameters are written positionally. The
    session's method, the ``oncofed query`` command and the reference docs
    are derived from this, so adding a task is its module plus one line in
    ``tasks/__init__.py``.
    """

    name: str
    params: type[P]
    result: type[R]
    serve: Callable[[Grid, P], R]
    node_handlers: Mapping[str, NodeHandler[P]] = field(default_factory=dict)
    model_handlers: Mapping[ModelMessage, ModelHandler[P]] = field(default_factory=dict)
    summary: str = ""
    releases: tuple[type[Release], ...] = ()
    """Every kind of reply the node side may send; the release gate refuses any other."""
    arguments: tuple[str, ...] = ()
    """Parameters written positionally, in this order (command-line arguments)."""
    table: Callable[[R], RenderableType] | None = None
    """The result as a terminal shows it; without one the command line prints its frame."""

    @property
    def permit_kind(self) -> TaskKind:
        """What the permit check reads of this task type."""
        return TaskKind(self.name, returns_models=bool(self.model_handlers), has_dp=self.params.DP)

    def run_server(self, grid: Grid, params_json: str) -> str:
        """Validate parameters, drive the grid, and return the result as JSON."""
        params = self.params.model_validate_json(params_json)
        return self.serve(grid, params).model_dump_json()


__all__ = [
    "Bounded",
    "ColumnRole",
    "DPReport",
    "LocalDataset",
    "LocalDatasets",
    "ModelHandler",
    "ModelMessage",
    "NodeHandler",
    "PublicBounds",
    "TaskParams",
    "TaskType",
    "dp_report",
    "public_bounds",
    "released",
    "round_down",
    "selected_rows",
]
