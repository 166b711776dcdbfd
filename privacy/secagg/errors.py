"""The one error secure aggregation raises, with the rule, the node and the fix.

``SecAggError`` is a ``NodeRefusal`` because almost every failure is a node
(or the coordinator acting for the nodes) declining to go on: a key that is
not signed by its pinned identity, too few participants, a stage replayed.
``node`` is the node that refused (empty on the coordinator side); when the
fault lies with another node's message, ``context["culprit"]`` names it and
so does the message text.
"""

from __future__ import annotations

from oncofed.kernel.errors import NodeRefusal


class SecAggError(NodeRefusal):
    """A secure-aggregation step refused: bad keys, too few nodes, a replayed stage."""


def refuse(problem: str, rule: str, node: str, fix: str, **context: object) -> SecAggError:
    """Build a ``SecAggError`` whose rule is ``secagg.<rule>`` (the caller raises it)."""
    return SecAggError(problem, rule=f"secagg.{rule}", node=node, fix=fix, **context)


__all__ = ["SecAggError", "refuse"]
