"""A node's privacy policy: what this centre lets leave it, set by its operator.

It is the ``[policy]`` section of the node's TOML file. Defaults are the safe
choice a centre gets without writing anything.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class NodePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    exact_event_times: bool = Field(
        default=False,
        description=(
            "Whether survival tasks may release counts at each exact event or censoring "
            "time. Off: they only release counts on the time grid the request agrees."
        ),
    )
    min_grid_width: float = Field(
        default=30.0,
        ge=0,
        description=(
            "Narrowest time-grid cell a survival request may use, in the unit of the "
            "dataset's durations (30 = a month when durations are days). A finer grid "
            "would give exact event times back (e.g. a 1-day grid on days)."
        ),
    )
    max_model_saturation: float = Field(
        default=0.37,
        gt=0,
        le=1,
        description=(
            "Largest ratio of a regression model's coefficients to this node's rows that "
            "the node releases cross-products for; closer to saturation they could pin "
            "down single patients (DataSHIELD's nfilter.glm default)."
        ),
    )


__all__ = ["NodePolicy"]
