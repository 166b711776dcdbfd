"""What a node releases, every number typed by what it is, so one gate can check them all.

A task's node handler returns a ``Release``: a pydantic model whose numeric
fields are annotated with their ``Kind`` -- a count, a bounded sum, a moment,
a model statistic, model weights, an event time, or a value the request
itself agreed (a category's index, a cell of an agreed grid). A field
holding a number without a kind is refused when the class is defined, so a
task cannot release a number the release gate (``gate.py``) has not been
told the nature of. Text fields (agreed labels) are allowed; they are the
request's, never a patient's.

On the wire a release is a Flower ``RecordDict``: its numbers in one
``ArrayRecord`` (which secure aggregation masks as a whole), its text and
the node's name in the ``meta`` record, and its privacy statement, if it
carries DP noise, in the privacy record the ledger charges.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from oncofed.privacy.accounting import PRIVACY_RECORD

RELEASE_RECORD = "oncofed.release"
"""The ArrayRecord holding a release's numbers."""
META = "meta"
"""The ConfigRecord holding a release's text, its type and the node's name."""


class Kind(StrEnum):
    """What a released number is; the gate's rules differ by kind."""

    COUNT = "count"
    """Rows, events, people: integers one person moves by at most one per cell."""
    BOUNDED_SUM = "bounded_sum"
    """Sums of values clamped to public bounds."""
    MOMENT = "moment"
    """Means, centred sums of squares and cross-products of rows."""
    MODEL_STATISTIC = "model_statistic"
    """Gradients, information matrices, deviances, risk-set sums of a model being fitted."""
    WEIGHTS = "weights"
    """A trained model's parameters (or parameters times rows, to be summed)."""
    AGREED = "agreed"
    """A value the request fixed (a category's index, a cell of an agreed grid): public."""
    EVENT_TIME = "event_time"
    """When events happened: a point of the agreed time grid, or, only where the node's
    policy allows exact event times, the exact time itself."""


@dataclass(frozen=True)
class Released:
    """Annotation metadata: the kind of the numbers in a field."""

    kind: Kind


IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def _ints(value: Any) -> IntArray:
    return np.asarray(value, dtype=np.int64)


def _floats(value: Any) -> FloatArray:
    return np.asarray(value, dtype=np.float64)


def _float_arrays(value: Any) -> dict[str, FloatArray]:
    return {str(k): np.asarray(v, dtype=np.float64) for k, v in dict(value).items()}


Counts = Annotated[IntArray, BeforeValidator(_ints), Released(Kind.COUNT)]
BoundedSums = Annotated[FloatArray, BeforeValidator(_floats), Released(Kind.BOUNDED_SUM)]
Moments = Annotated[FloatArray, BeforeValidator(_floats), Released(Kind.MOMENT)]
ModelStatistics = Annotated[FloatArray, BeforeValidator(_floats), Released(Kind.MODEL_STATISTIC)]
Weights = Annotated[dict[str, FloatArray], BeforeValidator(_float_arrays), Released(Kind.WEIGHTS)]
AgreedValues = Annotated[FloatArray, BeforeValidator(_floats), Released(Kind.AGREED)]
EventTimes = Annotated[FloatArray, BeforeValidator(_floats), Released(Kind.EVENT_TIME)]
AgreedIndices = Annotated[IntArray, BeforeValidator(_ints), Released(Kind.AGREED)]
Count = Annotated[int, Released(Kind.COUNT)]
BoundedSum = Annotated[float, Released(Kind.BOUNDED_SUM)]
Moment = Annotated[float, Released(Kind.MOMENT)]
ModelStatistic = Annotated[float, Released(Kind.MODEL_STATISTIC)]

_TEXT = (str, bool)


def _is_text(annotation: Any) -> bool:
    """str, bool, a tuple or list of str, or one of those or None."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return all(a is type(None) or _is_text(a) for a in typing.get_args(annotation))
    if origin in (tuple, list):
        return all(a is Ellipsis or a is str for a in typing.get_args(annotation))
    return annotation in _TEXT


def _kind(info: Any) -> Kind | None:
    return next((m.kind for m in info.metadata if isinstance(m, Released)), None)


class UntypedRelease(TypeError):
    """A release class with a number whose kind it does not state."""


class Release(BaseModel):
    """One node's reply to one message: numbers typed by kind, text, and its privacy statement.

    Subclass it per kind of reply; every field must be a typed number
    (``Counts``, ``Moments``, ...) or text.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    privacy: dict[str, Any] | None = Field(
        default=None,
        description="The DP statement (mechanism, loss, noise scales) when the numbers are noisy.",
    )

    NAME: ClassVar[str] = ""
    """Names the release on the wire (defaults to the class name)."""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        for name, info in cls.model_fields.items():
            if name == "privacy":
                continue
            if _kind(info) is None and not _is_text(info.annotation):
                raise UntypedRelease(
                    f"{cls.__name__}.{name} releases {info.annotation} without saying what it "
                    "is: annotate it as Counts, BoundedSums, Moments, ModelStatistics, Weights "
                    "or AgreedValues (oncofed.privacy.release), or make it text"
                )

    @classmethod
    def wire_name(cls) -> str:
        return cls.NAME or cls.__name__

    def numbers(self) -> Iterator[tuple[str, Kind, npt.NDArray[Any]]]:
        """Every released number, by field (a mapping's entries as ``field.key``) and kind."""
        for name, info in type(self).model_fields.items():
            kind = _kind(info)
            if kind is None:
                continue
            value = getattr(self, name)
            if isinstance(value, Mapping):
                for key in sorted(value):
                    yield f"{name}.{key}", kind, np.asarray(value[key])
            else:
                yield name, kind, np.asarray(value)

    def to_content(self, node: str) -> RecordDict:
        """The release as a Flower reply's content, stating the node that made it."""
        text: dict[str, Any] = {"node": node, "release": self.wire_name()}
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            if name != "privacy" and _kind(info) is None:
                text[name] = json.dumps(value)
        content = RecordDict(
            {
                RELEASE_RECORD: ArrayRecord(
                    {key: Array(np.asarray(v, order="C")) for key, _, v in self.numbers()}
                ),
                META: ConfigRecord(text),
            }
        )
        if self.privacy is not None:
            content[PRIVACY_RECORD] = ConfigRecord(self.privacy)
        return content

    @classmethod
    def from_content(cls: type[R], content: RecordDict) -> R:
        """The release in a reply (or in the masked total of several)."""
        meta = content.config_records[META]
        if meta.get("release") != cls.wire_name():
            raise ValueError(f"the reply holds a {meta.get('release')!r}, not a {cls.wire_name()}")
        # A release of text only has no numbers, and a masked total of it no number record.
        arrays = content.array_records.get(RELEASE_RECORD, ArrayRecord())
        fields: dict[str, Any] = {}
        for name, info in cls.model_fields.items():
            if name == "privacy":
                continue
            if _kind(info) is None:
                if name in meta:
                    fields[name] = json.loads(str(meta[name]))
                continue
            if typing.get_origin(info.annotation) is dict:
                prefix = f"{name}."
                fields[name] = {
                    key.removeprefix(prefix): arrays[key].numpy()
                    for key in arrays
                    if key.startswith(prefix)
                }
            else:
                value = arrays[name].numpy()
                fields[name] = value.item() if value.ndim == 0 else value
        privacy = content.config_records.get(PRIVACY_RECORD)
        if privacy is not None:
            fields["privacy"] = dict(privacy)
        return cls.model_validate(fields)


R = TypeVar("R", bound=Release)


def node_of(content: RecordDict) -> str:
    """The node a reply speaks for (``a, b, c`` for a masked total of several)."""
    return str(content.config_records[META]["node"])


__all__ = [
    "META",
    "RELEASE_RECORD",
    "AgreedIndices",
    "AgreedValues",
    "BoundedSum",
    "BoundedSums",
    "Count",
    "Counts",
    "EventTimes",
    "Kind",
    "ModelStatistic",
    "ModelStatistics",
    "Moment",
    "Moments",
    "Release",
    "Released",
    "UntypedRelease",
    "Weights",
    "node_of",
]
