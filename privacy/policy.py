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


__all__ = ["NodePolicy"]
