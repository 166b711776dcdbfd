"""A category or factor level listed twice is refused before anything is counted.

A break-it run found `describe(["age"], by="sex", categories=["1"] * 20, dp=...)`
accepted: each sex-1 row was counted in 20 groups and the rows "outside" came
out as -19 per patient, so one patient moved the released vector by about
sqrt(381) while the noise was scaled for 1 -- a release billed at epsilon 1
cost about 14, and averaging nine such answers told one patient's sex.
"""

from __future__ import annotations

import pandas as pd
import pytest
from pydantic import ValidationError

from oncofed.kernel.errors import QueryError
from oncofed.kernel.schema import infer_schema
from oncofed.tasks.describe import DescribeParams
from oncofed.tasks.encoding import agreed_categories
from oncofed.tasks.formula import parse_formula


def test_describe_refuses_repeated_categories_in_the_request() -> None:
    with pytest.raises(ValidationError, match="must not repeat"):
        DescribeParams(dataset="lung", columns=["age"], by="sex", categories=["1"] * 20)


def test_every_task_agreeing_categories_at_the_node_refuses_a_repeat() -> None:
    schema = infer_schema(pd.DataFrame({"sex": [1, 2, 1], "grade": ["I", "II", "I"]}))
    for column, repeated in (("sex", ["1", "2", "1"]), ("grade", ["I", "I"])):
        with pytest.raises(QueryError) as refused:
            agreed_categories(
                column, repeated, schema, "centre-A", option="categories", rule="x.required"
            )
        assert refused.value.rule == "query.categories_repeat"
        assert refused.value.node == "centre-A"


def test_a_formula_listing_a_level_twice_is_refused() -> None:
    with pytest.raises(QueryError) as refused:
        parse_formula("status ~ age + C(sex, levels=[1, 1, 2])")
    assert refused.value.rule == "query.formula_levels"
