"""The crosstab's terminal table, exact and DP (a DP table has no chi-square test to print)."""

from __future__ import annotations

from rich.console import Console

from oncofed.tasks.crosstab import CrosstabResult, crosstab_table

COUNTS = {
    "dataset": "lung",
    "row": "sex",
    "col": "status",
    "row_categories": ["1", "2"],
    "col_categories": ["0", "1"],
    "counts": [[26, 112], [37, 53]],
    "n": 228,
    "rows_missing": 0,
    "rows_outside_categories": 0,
    "rows_missing_by_node": {"a": 0},
    "rows_outside_by_node": {"a": 0},
    "nodes": ["a"],
}


def _printed(result: CrosstabResult) -> str:
    console = Console(width=100, record=True)
    console.print(crosstab_table(result))
    return console.export_text()


def test_an_exact_table_prints_its_test() -> None:
    exact = CrosstabResult(**COUNTS, statistic=7.024, pvalue=0.008, dof=1, correction=True)
    printed = _printed(exact)
    assert "chi-square test of independence with Yates' correction: 7.024 on 1 df" in printed
    assert "228" in printed  # the margin


def test_a_dp_table_prints_why_it_has_no_test() -> None:
    # statistic None once printed as a TypeError: `oncofed query crosstab --dp ...` crashed.
    printed = _printed(CrosstabResult(**COUNTS))
    assert "no chi-square test: it would ignore the noise in the DP counts" in printed
