"""Networks for the attack suite: the same data under a strict, an open and a DP policy.

Each attack runs against the default (strict) policy or a DP-required one,
and once against ``OPEN`` -- every defence off -- to show that the attack
really recovers the planted target there.
"""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import pytest

from oncofed.client.sandbox import Sandbox
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
DP_REQUIRED = NodePolicy(
    dp={
        "lung": DatasetPrivacy(
            dp_required=True,
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
    planted = pd.DataFrame([{**TARGET, "centre": "centre-A"}])
    return pd.concat([frame, planted], ignore_index=True)


def _network(frame: pd.DataFrame, policy: NodePolicy) -> Iterator[Sandbox]:
    with Sandbox.from_frame(frame, split_by="centre", dataset="lung", policy=policy) as net:
        yield net


@pytest.fixture(scope="session")
def strict_net(lung_with_target: pd.DataFrame) -> Iterator[Sandbox]:
    """The default policy every node gets without configuring anything."""
    yield from _network(lung_with_target, NodePolicy())


@pytest.fixture(scope="session")
def open_net(lung_with_target: pd.DataFrame) -> Iterator[Sandbox]:
    yield from _network(lung_with_target, OPEN)


@pytest.fixture(scope="session")
def dp_net(lung_with_target: pd.DataFrame) -> Iterator[Sandbox]:
    yield from _network(lung_with_target, DP_REQUIRED)
