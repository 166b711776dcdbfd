"""Shared fixtures: real data sets, real networks, a real PostgreSQL database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from oncofed.client.demo import lung_centres
from oncofed.client.sandbox import Sandbox
from tests.oracle import PER_REQUEST_ROWS, PERMISSIVE

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def lung() -> pd.DataFrame:
    """NCCTG lung cancer data (228 patients) with the demo's 4 centres."""
    return lung_centres(4)


@pytest.fixture(scope="session")
def gbsg2() -> pd.DataFrame:
    """German Breast Cancer Study Group 2 (686 patients), split at random into 3 centres."""
    from lifelines.datasets import load_gbsg2

    frame = load_gbsg2()
    rng = np.random.default_rng(20261122)
    return frame.assign(centre=rng.choice(["gbsg-a", "gbsg-b", "gbsg-c"], size=len(frame)))


@pytest.fixture(scope="session")
def lung_net(lung: pd.DataFrame) -> Iterator[Sandbox]:
    """A coordinator and 4 node processes holding the lung data, split by centre.

    Exact answers (the nodes allow them, the permits grant them), so results can be
    compared with the pooled analysis; tests/privacy runs the default, DP-only network.
    """
    with Sandbox.from_frame(
        lung, split_by="centre", dataset="lung", policy=PER_REQUEST_ROWS, release="exact"
    ) as net:
        yield net


@pytest.fixture(scope="session")
def lung_open_net(lung: pd.DataFrame) -> Iterator[Sandbox]:
    """The lung network without disclosure control, for oracle tests on fine bins and cells.

    The default policy refuses cells of 1-4 rows; tests/privacy shows that, and
    these tests check the mathematics where small cells are unavoidable.
    """
    with Sandbox.from_frame(
        lung, split_by="centre", dataset="lung", policy=PERMISSIVE, release="exact"
    ) as net:
        yield net


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg")
    admin = sqlalchemy.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"oncofed_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sqlalchemy.exc.OperationalError as exc:
        admin.dispose()
        pytest.skip(f"no PostgreSQL server reachable at 127.0.0.1:5432 ({exc.orig})")
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
