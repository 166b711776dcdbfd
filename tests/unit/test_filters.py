"""Filters: parsed as data, checked against the schema, evaluated with SQL's missing-value rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import TypeAdapter

from oncofed.kernel.errors import QueryError
from oncofed.kernel.schema import infer_schema
from oncofed.tasks.filters import Filter, check_filter, columns_of, evaluate, parse_filter

FRAME = pd.DataFrame(
    {
        "age": pd.array([50, 61, 70, 80, None], dtype="Int64"),
        "sex": pd.array([1, 2, None, 1, 2], dtype="Int64"),
        "wt.loss": [1.0, None, None, 3.0, 4.0],
        "stage": pd.array(["I", "II", "III", None, "II"], dtype="string"),
    }
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("age >= 61", [False, True, True, True, False]),
        ("age < 61 or age is null", [True, False, False, False, True]),
        ("sex in (2) and wt.loss is not null", [False, False, False, False, True]),
        ("sex not in (2)", [True, False, False, True, False]),
        ("not (age > 60)", [True, False, False, False, False]),
        ("stage == 'II'", [False, True, False, False, True]),
        ("stage in ('I', \"III\")", [True, False, True, False, False]),
        ("`wt.loss` > 2 and not stage is null", [False, False, False, False, True]),
        ("age > 55 and age < 75 or sex == 2", [False, True, True, False, True]),
    ],
)
def test_filters_match_hand_computed_rows(text: str, expected: list[bool]) -> None:
    where = parse_filter(text)
    assert evaluate(where, FRAME).tolist() == expected
    # A filter travels as JSON and comes back identical.
    adapter: TypeAdapter[Filter] = TypeAdapter(Filter)
    assert adapter.validate_json(adapter.dump_json(where)) == where


def test_missing_values_are_unknown_not_false() -> None:
    # Neither "age > 60" nor its negation keeps the patient whose age is missing.
    kept = evaluate(parse_filter("age > 60"), FRAME) | evaluate(parse_filter("not age > 60"), FRAME)
    assert kept.tolist() == [True, True, True, True, False]


@pytest.mark.parametrize(
    "text",
    [
        "age >",
        "age ~ 1",
        "",
        "age in ()",
        "(age > 1",
        "age = 3",
        "age > 1 and",
        "__import__('os') == 1",
    ],
)
def test_malformed_filters_are_refused_with_the_syntax_rule(text: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse_filter(text)
    assert caught.value.rule == "query.filter_syntax"


def test_schema_checks_name_the_column_and_rule() -> None:
    schema = infer_schema(FRAME)
    with pytest.raises(QueryError) as caught:
        check_filter(parse_filter("tumour > 3"), schema, "centre-a")
    assert (caught.value.rule, caught.value.node) == ("schema.unknown_column", "centre-a")
    with pytest.raises(QueryError) as caught:
        check_filter(parse_filter("stage > 'I'"), schema, "centre-a")
    assert caught.value.rule == "query.filter_type"
    with pytest.raises(QueryError) as caught:
        check_filter(parse_filter("age == 'old'"), schema, "centre-a")
    assert caught.value.rule == "query.filter_type"
    check_filter(parse_filter("age > 3 and stage in ('I')"), schema, "centre-a")
    assert columns_of(parse_filter("age > 3 or (sex == 1 and stage is null)")) == {
        "age",
        "sex",
        "stage",
    }
    assert np.all(
        evaluate(parse_filter("sex == 1.0"), FRAME) == evaluate(parse_filter("sex == 1"), FRAME)
    )
