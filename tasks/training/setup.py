"""Before round 1: the design every node must share, and how numeric features are scaled."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from flwr.serverapp import Grid

from oncofed.kernel.errors import QueryError
from oncofed.privacy.release import node_of
from oncofed.tasks.broadcast import broadcast
from oncofed.tasks.describe import DescribeParams, describe_serve
from oncofed.tasks.formula import same_design
from oncofed.tasks.training.params import Standardisation, TrainParams
from oncofed.tasks.training.records import TrainingDesign


def standardisation(grid: Grid, params: TrainParams) -> Standardisation:
    """Federated mean and standard deviation of each numeric feature (the describe task)."""
    columns = params.numeric_features
    if not columns:
        return Standardisation()
    request = params.request_for("describe")
    assert isinstance(request, DescribeParams)
    stats = describe_serve(grid, request).to_frame()
    return Standardisation(
        columns=columns,
        mean=tuple(float(m) for m in stats.loc[list(columns), "mean"]),
        std=tuple(float(s) if s else 1.0 for s in stats.loc[list(columns), "std"]),
    )


class Design(NamedTuple):
    columns: list[str]
    levels: dict[str, tuple[str, ...]]
    bounds: dict[str, tuple[float, ...]]  # declared ranges of the numeric features, under DP
    names: dict[int, str]  # node id -> node name, to say which node went silent


def agreed_design(grid: Grid, params: TrainParams, nodes: list[int]) -> Design:
    """Columns, factor levels and bounds, which every node must have alike."""
    columns: list[str] | None = None
    agreed: dict[str, dict[str, tuple[Any, ...]]] = {}
    names: dict[int, str] = {}
    for node_id, reply in broadcast(grid, "design", params, nodes).items():
        node = names[node_id] = node_of(reply)
        # Under secure aggregation, the total's text: the first node's.
        design = TrainingDesign.from_content(reply)
        columns = same_design(columns, list(design.columns), node, "training")
        declared: dict[str, dict[str, tuple[Any, ...]]] = {
            "levels": design.agreed_levels(),
            "bounds": design.declared_bounds(),
        }
        for what, found in declared.items():
            if agreed.setdefault(what, found) != found:
                raise QueryError(
                    f"nodes declare different {what}: {agreed[what]} versus {found}",
                    rule=f"training.{what}_disagree",
                    node=node,
                    fix="write every factor as C(column, levels=[...])"
                    if what == "levels"
                    else "the operators agree one schema, bounds included",
                )
    assert columns is not None  # broadcast raises when no node answered
    return Design(columns, agreed["levels"], agreed["bounds"], names)


def bounded_standardisation(bounds: Mapping[str, tuple[float, ...]]) -> Standardisation:
    """Centre at the midpoint of the declared range, scale by a quarter of it: no budget spent.

    For datasets a node releases only under DP, where the exact federated
    describe is refused. Cruder than federated moments when the declared
    range is much wider than the data: SGD then needs more steps.
    """
    columns = tuple(bounds)
    return Standardisation(
        columns=columns,
        mean=tuple((bounds[c][0] + bounds[c][1]) / 2 for c in columns),
        std=tuple((bounds[c][1] - bounds[c][0]) / 4 for c in columns),
    )


__all__ = ["Design", "agreed_design", "bounded_standardisation", "standardisation"]
