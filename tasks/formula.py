"""Model formulas (``y ~ age + C(sex) + age:C(sex) + np.log(wt.loss)``) as data.

A formula is parsed into pydantic models on the researcher's side and again
checked at every node against its schema; the node builds the design matrix
itself. Only the transforms in ``TRANSFORMS`` exist -- there is no way to call
anything else. Categorical factors use treatment coding against the first
agreed level, named as patsy names them (``C(sex)[T.2]``), so results line up
with statsmodels and lifelines on pooled data.

Supported: ``+`` terms, ``-1`` / ``+0`` (no intercept), ``a:b`` interactions,
``a*b`` (= ``a + b + a:b``), ``C(x)`` and ``C(x, levels=[...])``, and
``np.log``, ``np.log1p``, ``np.sqrt``, ``np.exp`` (also without ``np.``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from oncofed.kernel.errors import Param, QueryError
from oncofed.kernel.schema import DatasetSchema
from oncofed.tasks.encoding import category_labels, check_declared

Transform = Literal["log", "log1p", "sqrt", "exp"]
TRANSFORMS: dict[str, Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]] = {
    "log": np.log,
    "log1p": np.log1p,
    "sqrt": np.sqrt,
    "exp": np.exp,
}

FloatArray = npt.NDArray[np.float64]


class Factor(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str
    categorical: bool = False
    transform: Transform | None = None
    levels: tuple[str, ...] | None = None

    @property
    def label(self) -> str:
        if self.categorical:
            return f"C({self.column})"
        if self.transform:
            return f"np.{self.transform}({self.column})"
        return self.column


class Term(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    factors: tuple[Factor, ...] = Field(min_length=1)

    @property
    def label(self) -> str:
        return ":".join(f.label for f in self.factors)


class Formula(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    response: Factor | None = None
    terms: tuple[Term, ...] = ()
    intercept: bool = True

    def factors(self) -> list[Factor]:
        found = [f for term in self.terms for f in term.factors]
        return ([self.response] if self.response else []) + found

    def columns(self) -> set[str]:
        return {f.column for f in self.factors()}

    def declared_levels(self) -> dict[str, tuple[str, ...]]:
        """Levels written in the formula itself, e.g. ``C(sex, levels=[1, 2])``."""
        return {f.column: f.levels for f in self.factors() if f.categorical and f.levels}

    @property
    def text(self) -> str:
        rhs = [t.label for t in self.terms] or ["1"]
        if not self.intercept:
            rhs.append("- 1")
        lhs = self.response.label + " " if self.response else ""
        return f"{lhs}~ {' + '.join(rhs)}".replace("+ - 1", "- 1")


# ---- parsing ---------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>-?\d+(?:\.\d*)?)
      | (?P<string>'[^']*'|"[^"]*")
      | (?P<quoted>`[^`]+`)
      | (?P<op>[~+\-*:(),=\[\]])
      | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)


def _error(text: str, problem: str, rule: str = "query.formula_syntax") -> QueryError:
    return QueryError(
        f"cannot read the formula {text!r}: {problem}",
        rule=rule,
        fix='write e.g. "dead ~ age + C(sex) + np.log(wt.loss)"; allowed functions: '
        + ", ".join(f"np.{name}" for name in TRANSFORMS)
        + ", C(...)",
    )


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str]] = []
        position, stripped = 0, text.rstrip()
        while position < len(stripped):
            match = _TOKEN.match(stripped, position)
            if match is None or match.end() == position:
                raise _error(text, f"unexpected character {stripped[position:].lstrip()[:1]!r}")
            kind = match.lastgroup or ""
            self.tokens.append((kind, match.group(kind)))
            position = match.end()
        self.at = 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.at] if self.at < len(self.tokens) else ("end", "")

    def accept(self, value: str) -> bool:
        if self.peek() == ("op", value):
            self.at += 1
            return True
        return False

    def expect(self, value: str) -> None:
        if not self.accept(value):
            raise _error(self.text, f"expected {value!r} but found {self.peek()[1] or 'the end'!r}")

    def parse(self, needs_response: bool) -> Formula:
        response = None
        if any(t == ("op", "~") for t in self.tokens):
            if self.peek() != ("op", "~"):
                response = self.factor()
            self.expect("~")
        elif needs_response:
            raise _error(self.text, "a response is needed: write 'outcome ~ predictors'")
        intercept, terms = True, list[Term]()
        sign = "+"
        while True:
            kind, value = self.peek()
            if kind == "number":
                self.at += 1
                if value not in ("0", "1"):
                    raise _error(self.text, f"a number {value} cannot be a term")
                intercept = (value == "1") == (sign == "+")
            else:
                for term in self.product():
                    if sign == "-":
                        terms = [t for t in terms if t != term]
                    elif term not in terms:
                        terms.append(term)
            if self.accept("+"):
                sign = "+"
            elif self.accept("-"):
                sign = "-"
            else:
                break
        if self.peek()[0] != "end":
            raise _error(self.text, f"unexpected {self.peek()[1]!r}")
        if needs_response and response is None:
            raise _error(self.text, "a response is needed: write 'outcome ~ predictors'")
        ordered = sorted(terms, key=lambda t: len(t.factors))  # main effects first, as patsy
        return Formula(response=response, terms=tuple(ordered), intercept=intercept)

    def product(self) -> list[Term]:
        parts = [self.interaction()]
        while self.accept("*"):
            parts.append(self.interaction())
        terms = []
        for size in range(1, len(parts) + 1):
            for combo in itertools.combinations(parts, size):
                factors: list[Factor] = []
                for term in combo:
                    factors.extend(f for f in term.factors if f not in factors)
                terms.append(Term(factors=tuple(factors)))
        return terms

    def interaction(self) -> Term:
        factors = [self.factor()]
        while self.accept(":"):
            factor = self.factor()
            if factor not in factors:
                factors.append(factor)
        return Term(factors=tuple(factors))

    def name(self) -> str:
        kind, value = self.peek()
        self.at += 1
        if kind == "word":
            return value
        if kind == "quoted":
            return value[1:-1]
        raise _error(self.text, f"expected a column name but found {value or 'the end'!r}")

    def factor(self) -> Factor:
        name = self.name()
        if not self.accept("("):
            return Factor(column=name)
        function = name.removeprefix("np.")
        if name == "C":
            column = self.name()
            levels = None
            if self.accept(","):
                if self.name() != "levels":
                    raise _error(self.text, "C() takes only levels=[...]")
                self.expect("=")
                self.expect("[")
                levels = [self.level()]
                while self.accept(","):
                    levels.append(self.level())
                self.expect("]")
                if len(set(levels)) != len(levels):
                    # A repeated level gives a row two indicators: one patient would weigh
                    # twice in the sums, beyond what the disclosure and DP bounds assume.
                    raise _error(
                        self.text, f"C({column}) lists a level twice", rule="query.formula_levels"
                    )
            self.expect(")")
            return Factor(column=column, categorical=True, levels=tuple(levels) if levels else None)
        if function not in TRANSFORMS or (name != function and not name.startswith("np.")):
            raise _error(
                self.text, f"{name}() is not an allowed function", rule="query.formula_function"
            )
        column = self.name()
        self.expect(")")
        return Factor(column=column, transform=function)  # type: ignore[arg-type]

    def level(self) -> str:
        kind, value = self.peek()
        self.at += 1
        if kind == "string":
            return value[1:-1]
        if kind in ("number", "word"):
            return value
        raise _error(self.text, f"expected a level but found {value or 'the end'!r}")


def parse_formula(text: str, *, needs_response: bool = True) -> Formula:
    if not text.strip():
        raise _error(text, "the formula is empty")
    formula = _Parser(text).parse(needs_response)
    _check_hierarchy(formula, text)
    return formula


def _check_hierarchy(formula: Formula, text: str) -> None:
    # Treatment coding of an interaction is only the patsy coding when the
    # categorical factor's main effect is in the model too.
    mains = {t.factors[0] for t in formula.terms if len(t.factors) == 1}
    for term in formula.terms:
        if len(term.factors) > 1:
            for factor in term.factors:
                if factor.categorical and factor not in mains:
                    raise _error(
                        text,
                        f"{term.label} needs the main effect {factor.label} in the model",
                        rule="query.formula_hierarchy",
                    )


# ---- design matrix at the node -------------------------------------------


@dataclass(frozen=True)
class Design:
    """A node's design matrix on complete cases."""

    x: FloatArray
    names: list[str]
    y: FloatArray | None
    rows_dropped: int
    kept: npt.NDArray[np.bool_]
    """Which rows of the frame the design holds, in order."""


def same_design(agreed: list[str] | None, names: list[str], node: str, task: str) -> list[str]:
    """The design columns every node built; a node that built others is refused by name.

    Nodes agree by construction when levels are agreed; this catches levels taken
    from schemas that differ between centres.
    """
    if agreed is not None and names != agreed:
        raise QueryError(
            f"nodes build different design columns: {agreed} versus {names}",
            rule=f"{task}.levels_disagree",
            node=node,
            fix="write every categorical factor as C(column, levels=[...]) so all "
            "nodes use the same levels",
        )
    return names


def agreed_levels(factor: Factor, schema: DatasetSchema, node: str) -> tuple[str, ...]:
    levels = factor.levels or schema.columns[factor.column].categories
    if not levels or len(levels) < 2:
        raise QueryError(
            f"{factor.label} has no agreed levels",
            rule="query.formula_levels",
            node=node,
            fix=f"write C({factor.column}, levels=[...]) with at least two levels, "
            "or declare the column's categories in the node schema",
            column=factor.column,
        )
    if factor.levels:
        check_declared(
            factor.column,
            factor.levels,
            schema,
            node,
            fix=lambda declared: f"write C({factor.column}, levels={list(declared)!r})",
        )
    return levels


def check_formula(formula: Formula, schema: DatasetSchema, node: str) -> None:
    for factor in formula.factors():
        spec = schema.columns.get(factor.column)
        if spec is None:
            raise QueryError(
                f"formula column {factor.column!r} is not in the dataset",
                rule="schema.unknown_column",
                node=node,
                fix=f"use one of the declared columns: {schema.describe_types()}",
                column=factor.column,
            )
        if factor.categorical:
            agreed_levels(factor, schema, node)
        elif not spec.numeric:
            raise QueryError(
                f"{factor.label}: column {factor.column!r} is {spec.type}, not a number",
                rule="schema.column_role",
                node=node,
                fix=f"write C({factor.column}) to use it as a categorical factor",
                column=factor.column,
            )


def design_matrix(
    formula: Formula,
    frame: pd.DataFrame,
    schema: DatasetSchema,
    node: str,
    *,
    drop_invalid: bool = False,
) -> Design:
    """Intercept and term columns on the rows where every formula column is present.

    A value outside its factor's agreed levels, or where a transform has no finite
    value, is refused -- or, with ``drop_invalid`` (DP releases), leaves its row out
    like a missing value: a refusal that depends on one row would tell whether that
    row exists, for free.
    """
    check_formula(formula, schema, node)
    columns = sorted(formula.columns())
    complete = frame[columns].notna().all(axis=1).to_numpy()
    if drop_invalid:
        complete &= _valid_values(formula, frame, schema, node)
    data = frame.loc[complete]
    blocks: list[FloatArray] = []
    names: list[str] = []
    if formula.intercept:
        blocks.append(np.ones((len(data), 1)))
        names.append("Intercept")
    # Without an intercept the first categorical main effect takes every level, as in patsy.
    full_rank = (
        None
        if formula.intercept
        else next(
            (
                t.factors[0]
                for t in formula.terms
                if len(t.factors) == 1 and t.factors[0].categorical
            ),
            None,
        )
    )
    for term in formula.terms:
        parts = [
            _factor_columns(f, data, schema, node, full=len(term.factors) == 1 and f == full_rank)
            for f in term.factors
        ]
        for combo in itertools.product(*parts):
            names.append(":".join(name for name, _ in combo))
            values = np.ones(len(data))
            for _, column in combo:
                values = values * column
            blocks.append(values.reshape(-1, 1))
    x = np.hstack(blocks) if blocks else np.zeros((len(data), 0))
    y = None
    if formula.response is not None:
        ((_, y),) = _factor_columns(formula.response, data, schema, node)
    return Design(x=x, names=names, y=y, rows_dropped=int((~complete).sum()), kept=complete)


def _valid_values(
    formula: Formula, frame: pd.DataFrame, schema: DatasetSchema, node: str
) -> npt.NDArray[np.bool_]:
    """Rows whose factor values are agreed levels and whose transforms are finite."""
    valid = np.ones(len(frame), dtype=bool)
    for factor in formula.factors():
        if factor.categorical:
            levels = agreed_levels(factor, schema, node)
            labels = category_labels(frame[factor.column], schema.columns[factor.column])
            valid &= (labels.isna() | labels.isin(levels)).to_numpy(dtype=bool)
        elif factor.transform is not None:
            values = frame[factor.column].to_numpy(dtype=float, na_value=np.nan)
            with np.errstate(all="ignore"):
                transformed = TRANSFORMS[factor.transform](values)
            valid &= np.isnan(values) | np.isfinite(transformed)
    return valid


def _factor_columns(
    factor: Factor, data: pd.DataFrame, schema: DatasetSchema, node: str, full: bool = False
) -> list[tuple[str, FloatArray]]:
    if factor.categorical:
        levels = agreed_levels(factor, schema, node)
        labels = category_labels(data[factor.column], schema.columns[factor.column])
        unknown = sorted(set(labels.dropna()) - set(levels))
        if unknown:
            raise QueryError(
                f"{factor.label} has values outside the agreed levels",
                rule="query.formula_levels",
                node=node,
                fix=f"list every level in C({factor.column}, levels=[...]) or filter the rows",
                column=factor.column,
            )
        if full:
            return [
                (f"{factor.label}[{level}]", np.asarray(labels == level, dtype=np.float64))
                for level in levels
            ]
        return [
            (f"{factor.label}[T.{level}]", np.asarray(labels == level, dtype=np.float64))
            for level in levels[1:]
        ]
    values = data[factor.column].to_numpy(dtype=float, na_value=np.nan)
    if factor.transform is not None:
        with np.errstate(all="ignore"):
            values = TRANSFORMS[factor.transform](values)
        if not np.all(np.isfinite(values)):
            raise QueryError(
                f"{factor.label} is not finite for some rows",
                rule="query.formula_domain",
                node=node,
                fix=f"filter the rows first, e.g. {Param('where', f'{factor.column} > 0')}",
                column=factor.column,
            )
    return [(factor.label, values)]


__all__ = [
    "Design",
    "Factor",
    "Formula",
    "Term",
    "agreed_levels",
    "check_formula",
    "design_matrix",
    "parse_formula",
    "same_design",
]
