"""The release gate: every number a node releases passes here, checked by what it is.

The node's runtime calls ``check_release`` on each handler's ``Release``
before it becomes a reply; a handler has no other way to reply (a
``RecordDict`` or an undeclared release type is refused), so no number
leaves unseen. The rules here hold for every kind: numbers are finite, and
of their kind's type (a count is an integer, and never below zero unless
it carries DP noise). The task-specific disclosure rules (cells, subsets,
saturation) still run in the handlers; they move here kind by kind.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from oncofed.kernel.errors import TaskFailed
from oncofed.privacy.release import Kind, Release


def _refuse(detail: str, rule: str, node: str) -> TaskFailed:
    # A malformed release is the node's own fault, never the researcher's: no data is named.
    return TaskFailed(
        detail,
        rule=rule,
        node=node,
        fix="the node operator reports this to the oncofed maintainers with the node's log",
    )


def check_release(
    release: object, declared: Sequence[type[Release]], *, task: str, node: str
) -> Release:
    """The release, if it is a declared one and every number in it is what its kind says."""
    if not isinstance(release, Release) or type(release) not in declared:
        raise _refuse(
            f"task {task!r} produced a reply ({type(release).__name__}) that is not one of "
            "its declared releases; nothing was sent",
            "release.undeclared",
            node,
        )
    noisy = release.privacy is not None
    for key, kind, values in release.numbers():
        if values.dtype.kind not in "iuf":
            raise _refuse(f"{key} is not a number", "release.type", node)
        if not np.all(np.isfinite(values)):
            raise _refuse(f"{key} holds a number that is not finite", "release.finite", node)
        if kind is Kind.COUNT:
            if values.dtype.kind not in "iu":
                raise _refuse(f"{key} is a count but not an integer", "release.type", node)
            if not noisy and np.any(values < 0):
                raise _refuse(f"{key} is an exact count below zero", "release.count", node)
    return release


__all__ = ["check_release"]
