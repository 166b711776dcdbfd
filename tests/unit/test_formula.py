"""Formulas: parsed as data, design matrices equal to patsy's on the same rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from oncofed.kernel.errors import QueryError
from oncofed.kernel.schema import infer_schema
from oncofed.tasks.formula import Formula, design_matrix, parse_formula

patsy = pytest.importorskip("patsy")


@pytest.fixture(scope="module")
def lung() -> pd.DataFrame:
    from lifelines.datasets import load_lung

    frame = load_lung()
    return frame.assign(dead=frame["status"])  # lifelines codes status 1 = died


CASES = [
    (
        "dead ~ age + C(sex, levels=[1, 2]) + np.log(meal.cal)",
        "dead ~ age + C(sex) + np.log(Q('meal.cal'))",
    ),
    ("dead ~ age*C(sex, levels=[1,2]) + ph.karno - 1", "dead ~ age*C(sex) + Q('ph.karno') - 1"),
    (
        "dead ~ C(ph.ecog, levels=[0, 1, 2, 3]) + age:ph.karno + np.sqrt(time)",
        "dead ~ C(Q('ph.ecog')) + age:Q('ph.karno') + np.sqrt(time)",
    ),
    ("np.log(time) ~ age + wt.loss", "np.log(time) ~ age + Q('wt.loss')"),
]


@pytest.mark.parametrize(("ours", "theirs"), CASES)
def test_design_matrix_equals_patsy(lung: pd.DataFrame, ours: str, theirs: str) -> None:
    design = design_matrix(parse_formula(ours), lung, infer_schema(lung), "centre-a")
    y, x = patsy.dmatrices(theirs, lung, return_type="dataframe")
    assert design.x.shape == x.shape
    assert design.rows_dropped == len(lung) - len(x)
    np.testing.assert_allclose(design.y, y.to_numpy().ravel())
    # Same columns, matched by content; names as patsy writes them (without Q()).
    for i, name in enumerate(design.names):
        matches = [c for c in x.columns if np.allclose(x[c].to_numpy(), design.x[:, i])]
        assert matches, name
        expected = matches[0].replace("Q('", "").replace("')", "").replace(".0]", "]")
        assert name == expected


def test_formula_round_trips_as_json_and_text() -> None:
    formula = parse_formula("y ~ a + b:C(g, levels=['x', 'y']) + C(g, levels=['x', 'y'])")
    assert Formula.model_validate_json(formula.model_dump_json()) == formula
    assert formula.text == "y ~ a + C(g) + b:C(g)"
    assert [t.label for t in parse_formula("y ~ a*b").terms] == ["a", "b", "a:b"]
    assert parse_formula("y ~ a + b - b").text == "y ~ a"
    assert not parse_formula("y ~ 0 + a").intercept


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("y ~ os.system(a)", "query.formula_function"),
        ("y ~ __import__(a)", "query.formula_function"),
        ("y ~ np.random(a)", "query.formula_function"),
        ("y ~ eval(a)", "query.formula_function"),
        ("y ~ a +", "query.formula_syntax"),
        ("y ~ a ; b", "query.formula_syntax"),
        ("~ a", "query.formula_syntax"),
        ("y ~ a:C(g, levels=[1, 2])", "query.formula_hierarchy"),
        ("y ~ 2", "query.formula_syntax"),
    ],
)
def test_forbidden_or_malformed_formulas_are_refused(text: str, rule: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse_formula(text)
    assert caught.value.rule == rule


def test_node_side_checks_name_node_column_and_fix(lung: pd.DataFrame) -> None:
    schema = infer_schema(lung)
    cases = [
        ("dead ~ tumour", "schema.unknown_column"),
        ("dead ~ C(sex)", "query.formula_levels"),  # integer column, no agreed levels
        ("dead ~ C(sex, levels=[1])", "query.formula_levels"),
        ("dead ~ C(ph.ecog, levels=[0, 1])", "query.formula_levels"),  # data has 2 and 3
        ("dead ~ np.log(wt.loss)", "query.formula_domain"),  # weight loss can be 0 or less
    ]
    for text, rule in cases:
        with pytest.raises(QueryError) as caught:
            design_matrix(parse_formula(text), lung, schema, "centre-a")
        assert (caught.value.rule, caught.value.node) == (rule, "centre-a"), text
        assert caught.value.fix
