"""Networks for the attack suite: the same data under the defaults, exact answers, and none.

``default_net`` is what a centre gets without configuring anything: every
release carries DP noise. ``dp_net`` is the same with a smaller budget the
budget attacks can exhaust. ``strict_net`` allows exact answers (permit and
policy) under the default disclosure rules. ``open_net`` allows exact
answers with every defence off: each attack runs there once to show that it
really recovers the planted target.
"""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import pytest

from oncofed.client.sandbox import Sandbox
from oncofed.governance.permits import ReleaseMode
from oncofed.privacy.policy import DatasetPrivacy, NodePolicy
from tests.oracle import PERMISSIVE

TARGET = {"pid": 999, "age": 85, "wt.loss": 33.0, "status": 1, "time": 400, "sex": 1}
"""A planted patient at centre-A: the oldest in the data (lung's oldest is 82)."""

OPEN = PERMISSIVE.model_copy(
    update={
        "max_factor_levels": 1000,
        "exact_event_times": True,
        "min_grid_width": 0.0,
        "max_model_saturation": 1.0,
    }
)
STRICT_COHORTS = {"elderly": "age >= 70"}

DP_POLICY = NodePolicy(
    dp={
        "lung": DatasetPrivacy(
            epsilon=2.0,
            delta=1e-6,
            max_epsilon_per_release=1.0,
            # The suite's one researcher works under many permits on this network;
            # tests/privacy/test_attacks.py tries the lifetime cap on a network of its own.
            researcher_epsilon=1000.0,
        )
    }
)


@pytest.fixture(scope="session")
def lung_with_target(lung: pd.DataFrame) -> pd.DataFrame:
    frame = lung.assign(pid=range(1, len(lung) + 1))
    at_a = frame[frame["centre"] == "centre-A"].dropna().iloc[0]
    # A complete record, like its neighbours at centre-A: exact answers use only complete
    # records, and the attacks are after the target, not after its missing values.
    rest = {c: at_a[c] for c in ("inst", "ph.ecog", "ph.karno", "pat.karno", "meal.cal")}
    planted = pd.DataFrame([{**TARGET, **rest, "centre": "centre-A"}])
    return pd.concat([frame, planted], ignore_index=True)


def _network(
    frame: pd.DataFrame,
    policy: NodePolicy | None,
    release: ReleaseMode = "dp",
    cohorts: dict[str, str] | None = None,
) -> Iterator[Sandbox]:
    with Sandbox.from_frame(
        frame, split_by="centre", dataset="lung", policy=policy, release=release, cohorts=cohorts
    ) as net:
        yield net


@pytest.fixture(scope="session")
def default_net(lung_with_target: pd.DataFrame) -> Iterator[Sandbox]:
    """Every setting at its default, the nodes' policy and the permits' release mode."""
    yield from _network(lung_with_target, None)


@pytest.fixture(scope="session")
def strict_net(lung_with_target: pd.DataFrame) -> Iterator[Sandbox]:
    """Exact answers granted and allowed, under the default disclosure rules.

    The permits name one cohort; exact requests may filter on nothing else.
    """
    yield from _network(lung_with_target, NodePolicy(), "exact", STRICT_COHORTS)


@pytest.fixture(scope="session")
def open_net(lung_with_target: pd.DataFrame) -> Iterator[Sandbox]:
    yield from _network(lung_with_target, OPEN, "exact")


@pytest.fixture(scope="session")
def dp_net(lung_with_target: pd.DataFrame) -> Iterator[Sandbox]:
    yield from _network(lung_with_target, DP_POLICY)
