"""A node's privacy policy: what this centre lets leave it, set by its operator.

It is the ``[policy]`` section of the node's TOML file. Defaults are the safe
choice a centre gets without writing anything; docs/privacy.md explains each
rule for a data protection officer.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DatasetPrivacy(BaseModel):
    """How one dataset may be released, and its differential-privacy budget."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow_exact: bool = Field(
        default=False,
        description=(
            "Whether this node answers without noise where a permit grants the dataset "
            "with release = exact. Off (the default), every release carries differential-"
            "privacy noise: requests without dp=, and tasks without a DP mechanism, are refused."
        ),
    )
    epsilon: float = Field(
        default=3.0,
        gt=0,
        le=100,
        description="Total privacy loss one study may spend on this dataset at this node.",
    )
    researcher_epsilon: float | None = Field(
        default=None,
        gt=0,
        le=1000,
        description=(
            "Total privacy loss one researcher may spend on this dataset at this node over "
            "every permit they hold, so a new permit does not bring a fresh budget "
            "(default: twice epsilon)."
        ),
    )
    delta: float = Field(
        default=1e-5, gt=0, lt=1e-2, description="The delta at which epsilon is stated."
    )
    max_epsilon_per_release: float = Field(
        default=1.0,
        gt=0,
        description="Largest loss a single release (one reply, or one training round) may cost.",
    )

    @model_validator(mode="after")
    def _release_within_total(self) -> DatasetPrivacy:
        if self.max_epsilon_per_release > min(self.epsilon, self.lifetime_epsilon):
            raise ValueError("max_epsilon_per_release cannot exceed epsilon nor researcher_epsilon")
        return self

    @property
    def lifetime_epsilon(self) -> float:
        """The researcher's cap over every permit: the one set, or twice a permit's."""
        if self.researcher_epsilon is not None:
            return self.researcher_epsilon
        return 2 * self.epsilon


EVERY_DATASET = "*"
"""The key of ``[policy.dp]`` whose settings apply to every dataset not named."""


class NodePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_cell_count: int = Field(
        default=5,
        ge=1,
        description=(
            "Smallest non-zero count the node releases: a table cell, histogram bin, "
            "group or factor level with 1 to min_cell_count - 1 rows is refused."
        ),
    )
    min_subset_size: int = Field(
        default=10,
        ge=1,
        description="Fewest rows an analysis may use (after its where filter) at this node.",
    )
    min_complement_size: int = Field(
        default=10,
        ge=1,
        description=(
            "Fewest rows a where filter may exclude, unless it excludes none: comparing a "
            "subset with the whole would otherwise reveal the few rows left out."
        ),
    )
    min_nodes: int = Field(
        default=3,
        ge=1,
        description=(
            "Fewest nodes a task must be sent to for this node to take part; with fewer, "
            "the others' contributions could be subtracted from the total."
        ),
    )
    max_factor_levels: int = Field(
        default=20,
        ge=2,
        description="Most levels a grouping column or model factor may have.",
    )
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
        default=0.33,
        gt=0,
        le=1,
        description=(
            "Largest ratio of a regression model's coefficients to this node's rows that "
            "the node releases cross-products for; closer to saturation they could pin "
            "down single patients."
        ),
    )
    exact_complete_records: bool = Field(
        default=True,
        description=(
            "Exact answers use only the records complete on every variable the permit "
            "grants (every declared column where it names none), whatever columns a request "
            "names: otherwise two analyses whose columns differ by one with a single missing "
            "value differ by that one patient."
        ),
    )
    dominance_p: float = Field(
        default=10.0,
        ge=0,
        le=100,
        description=(
            "The p % rule for exact sums, means and model cross-products: refused when the "
            "rows other than the two largest contributors add less than p % of the largest "
            "(one row would dominate it). 0 turns the rule off."
        ),
    )
    dp: dict[str, DatasetPrivacy] = Field(
        default_factory=dict,
        description=(
            "Per-dataset release mode and differential-privacy budget ([policy.dp.<name>]; "
            '[policy.dp."*"] for every dataset not named).'
        ),
    )

    def privacy_for(self, dataset: str) -> DatasetPrivacy:
        """The settings of a dataset: its own, else those for every dataset, else the defaults."""
        return self.dp.get(dataset) or self.dp.get(EVERY_DATASET) or DatasetPrivacy()


__all__ = ["EVERY_DATASET", "DatasetPrivacy", "NodePolicy"]
