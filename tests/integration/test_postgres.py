"""The coordinator on PostgreSQL: the same network, the same exact answer."""

from __future__ import annotations

import pandas as pd
import pytest

from oncofed.client.sandbox import Sandbox
from tests.oracle import PER_REQUEST_ROWS, assert_describe_matches


@pytest.mark.postgres
def test_describe_with_a_postgres_coordinator(postgres_url: str, lung: pd.DataFrame) -> None:
    columns = ["age", "wt.loss"]
    with (
        Sandbox.from_frame(
            lung,
            split_by="centre",
            dataset="lung",
            database_url=postgres_url,
            policy=PER_REQUEST_ROWS,
            release="exact",
        ) as net,
        net.session(progress=False) as session,
    ):
        result = session.describe(columns, min_nodes=4)
        net.stop_coordinator(kill=True)
        net.start_coordinator()
        net.wait_for_nodes(net.node_names)
        again = session.describe(columns, min_nodes=4)
    assert_describe_matches(result, lung, columns)
    assert again.rows == result.rows
