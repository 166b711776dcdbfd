"""Row filters (``where``): parsed into data, checked against the schema, never evaluated as code.

Grammar (case-insensitive keywords)::

    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" expr ")" | comparison
    comparison := column ("==" | "!=" | "<" | "<=" | ">" | ">=") literal
                | column ["not"] "in" "(" literal ("," literal)* ")"
                | column "is" ["not"] "null"
    column     := name with letters, digits, "_" and "." | `any name in backticks`
    literal    := number | 'text' | "text" | true | false

Missing values follow SQL: a comparison with a missing value is unknown, and
a row is kept only when the whole filter is true.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Annotated, Literal, Union

import numpy as np
import numpy.typing as npt
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from oncofed.kernel.errors import QueryError
from oncofed.kernel.schema import DatasetSchema

Scalar = Union[bool, int, float, str]  # noqa: UP007 (pydantic needs the order: bool before int)
CompareOp = Literal["==", "!=", "<", "<=", ">", ">="]
ORDERED_OPS = frozenset({"<", "<=", ">", ">="})


class _Node(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Compare(_Node):
    kind: Literal["compare"] = "compare"
    column: str
    op: CompareOp
    value: Scalar


class Member(_Node):
    kind: Literal["in"] = "in"
    column: str
    values: tuple[Scalar, ...] = Field(min_length=1)
    negate: bool = False


class IsNull(_Node):
    kind: Literal["null"] = "null"
    column: str
    negate: bool = False


class And(_Node):
    kind: Literal["and"] = "and"
    items: tuple[Filter, ...] = Field(min_length=2)


class Or(_Node):
    kind: Literal["or"] = "or"
    items: tuple[Filter, ...] = Field(min_length=2)


class Not(_Node):
    kind: Literal["not"] = "not"
    item: Filter


Filter = Annotated[Compare | Member | IsNull | And | Or | Not, Field(discriminator="kind")]
for _model in (And, Or, Not):
    _model.model_rebuild()


MAX_DEPTH = 32
"""Deepest nesting of and / or / not a filter may have; deeper ones only serve to exhaust."""


def depth(where: Filter) -> int:
    """How deeply the filter nests (a single comparison is 1)."""
    if isinstance(where, Compare | Member | IsNull):
        return 1
    if isinstance(where, Not):
        return 1 + depth(where.item)
    return 1 + max(depth(item) for item in where.items)


def columns_of(where: Filter) -> set[str]:
    if isinstance(where, Compare | Member | IsNull):
        return {where.column}
    if isinstance(where, Not):
        return columns_of(where.item)
    return set().union(*(columns_of(item) for item in where.items))


# ---- parsing ---------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
      | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<quoted>`[^`]+`)
      | (?P<op>==|!=|<=|>=|<|>|\(|\)|,)
      | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = frozenset({"and", "or", "not", "in", "is", "null", "true", "false"})


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise _syntax(text, f"unexpected character {text[position:].lstrip()[:1]!r}")
        kind = match.lastgroup or ""
        value = match.group(kind)
        if kind == "word" and value.lower() in _KEYWORDS:
            kind, value = "keyword", value.lower()
        tokens.append((kind, value))
        position = match.end()
    return tokens


def _syntax(text: str, problem: str) -> QueryError:
    return QueryError(
        f"cannot read the filter {text!r}: {problem}",
        rule="query.filter_syntax",
        fix='write e.g. "age >= 60 and sex in (1, 2) and wt.loss is not null"',
    )


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.at = 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.at] if self.at < len(self.tokens) else ("end", "")

    def take(self, kind: str, value: str | None = None) -> str:
        token = self.peek()
        if token[0] != kind or (value is not None and token[1] != value):
            wanted = value or kind
            raise _syntax(self.text, f"expected {wanted} but found {token[1] or 'the end'!r}")
        self.at += 1
        return token[1]

    def accept(self, kind: str, value: str) -> bool:
        if self.peek() == (kind, value):
            self.at += 1
            return True
        return False

    def parse(self) -> Filter:
        result = self.disjunction()
        if self.peek()[0] != "end":
            raise _syntax(self.text, f"unexpected {self.peek()[1]!r}")
        return result

    def disjunction(self) -> Filter:
        items = [self.conjunction()]
        while self.accept("keyword", "or"):
            items.append(self.conjunction())
        return items[0] if len(items) == 1 else Or(items=tuple(items))

    def conjunction(self) -> Filter:
        items = [self.negation()]
        while self.accept("keyword", "and"):
            items.append(self.negation())
        return items[0] if len(items) == 1 else And(items=tuple(items))

    def negation(self) -> Filter:
        if self.accept("keyword", "not"):
            return Not(item=self.negation())
        if self.accept("op", "("):
            inner = self.disjunction()
            self.take("op", ")")
            return inner
        return self.comparison()

    def column(self) -> str:
        kind, value = self.peek()
        if kind == "word":
            self.at += 1
            return value
        if kind == "quoted":
            self.at += 1
            return value[1:-1]
        raise _syntax(self.text, f"expected a column name but found {value or 'the end'!r}")

    def literal(self) -> Scalar:
        kind, value = self.peek()
        self.at += 1
        if kind == "number":
            number = float(value)
            return int(number) if re.fullmatch(r"-?\d+", value) else number
        if kind == "string":
            return re.sub(r"\\(.)", r"\1", value[1:-1])
        if kind == "keyword" and value in ("true", "false"):
            return value == "true"
        raise _syntax(self.text, f"expected a value but found {value or 'the end'!r}")

    def comparison(self) -> Filter:
        column = self.column()
        kind, value = self.peek()
        if kind == "op" and value in ("==", "!=", "<", "<=", ">", ">="):
            self.at += 1
            return Compare(column=column, op=value, value=self.literal())  # type: ignore[arg-type]
        negate = self.accept("keyword", "not")
        if self.accept("keyword", "in"):
            self.take("op", "(")
            values = [self.literal()]
            while self.accept("op", ","):
                values.append(self.literal())
            self.take("op", ")")
            return Member(column=column, values=tuple(values), negate=negate)
        if not negate and self.accept("keyword", "is"):
            is_not = self.accept("keyword", "not")
            self.take("keyword", "null")
            return IsNull(column=column, negate=is_not)
        raise _syntax(self.text, f"expected a comparison after {column!r}")


def parse_filter(text: str) -> Filter:
    """Parse a filter string into its validated model."""
    if not text.strip():
        raise _syntax(text, "the filter is empty")
    return _Parser(text).parse()


# ---- checking and evaluating at the node -----------------------------------


def check_filter(where: Filter, schema: DatasetSchema, node: str) -> None:
    """Refuse comparisons a column's declared type cannot support."""
    if isinstance(where, And | Or):
        for item in where.items:
            check_filter(item, schema, node)
        return
    if isinstance(where, Not):
        check_filter(where.item, schema, node)
        return
    spec = schema.columns.get(where.column)
    if spec is None:
        raise QueryError(
            f"filter column {where.column!r} is not in the dataset",
            rule="schema.unknown_column",
            node=node,
            fix=f"use one of the declared columns: {schema.describe_types()}",
            column=where.column,
        )
    values: tuple[Scalar, ...] = ()
    if isinstance(where, Compare):
        values = (where.value,)
        if where.op in ORDERED_OPS and not spec.numeric:
            raise QueryError(
                f"filter {where.column} {where.op} ... orders a {spec.type} column",
                rule="query.filter_type",
                node=node,
                fix="use ==, != or in for category and text columns",
                column=where.column,
            )
    elif isinstance(where, Member):
        values = where.values
    if spec.numeric and any(isinstance(v, str) for v in values):
        raise QueryError(
            f"filter compares the {spec.type} column {where.column!r} with text",
            rule="query.filter_type",
            node=node,
            fix="compare numeric columns with numbers",
            column=where.column,
        )


def evaluate(where: Filter, frame: pd.DataFrame) -> npt.NDArray[np.bool_]:
    """Rows where the filter is true (unknown counts as not true)."""
    mask = _evaluate(where, frame)
    return np.asarray(mask.fillna(False).to_numpy(dtype=bool))


def _evaluate(where: Filter, frame: pd.DataFrame) -> pd.Series:
    if isinstance(where, And):
        result = _evaluate(where.items[0], frame)
        for item in where.items[1:]:
            result = result & _evaluate(item, frame)
        return result
    if isinstance(where, Or):
        result = _evaluate(where.items[0], frame)
        for item in where.items[1:]:
            result = result | _evaluate(item, frame)
        return result
    if isinstance(where, Not):
        return ~_evaluate(where.item, frame)
    column = frame[where.column]
    if isinstance(where, IsNull):
        nulls = column.isna().astype("boolean")
        return ~nulls if where.negate else nulls
    if isinstance(where, Member):
        values = [_coerce(v, column) for v in where.values]
        member = column.isin(values).astype("boolean").mask(column.isna())
        return ~member if where.negate else member
    value = _coerce(where.value, column)
    result = _COMPARE[where.op](column, value)
    return pd.Series(result, index=frame.index).astype("boolean").mask(column.isna())


_COMPARE: dict[str, Callable[[pd.Series, Scalar], pd.Series]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _coerce(value: Scalar, column: pd.Series) -> Scalar:
    # Category labels are text; a number written for an integer-coded category matches its label.
    if isinstance(column.dtype, pd.StringDtype) or column.dtype == object:
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value).lower() if isinstance(value, bool) else str(value)
    return value


__all__ = [
    "MAX_DEPTH",
    "And",
    "Compare",
    "Filter",
    "IsNull",
    "Member",
    "Not",
    "Or",
    "check_filter",
    "columns_of",
    "depth",
    "evaluate",
    "parse_filter",
]
