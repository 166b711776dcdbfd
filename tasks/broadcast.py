"""``broadcast``: one step to every node, with every refusal raised as one error.

The step goes out plainly or, when the request asks for secure aggregation,
through the secure-sum stages (``secure.py``), whose single masked total
the server function adds up as it would the nodes' replies.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import RecordDict
from flwr.serverapp import Grid

from oncofed.kernel.errors import FederatedErrors, TaskFailed
from oncofed.tasks.base import TaskParams
from oncofed.tasks.messaging import exchange
from oncofed.tasks.secure import secure_broadcast


def broadcast(
    grid: Grid,
    action: str,
    params: TaskParams,
    node_ids: Iterable[int],
    group_id: str = "",
) -> dict[int, RecordDict]:
    """Send one ``query.<action>`` with the parameters to each node; return replies by node.

    Any refusal or failure raises one typed error naming every node that
    refused, so a researcher sees all the problems at once. With
    ``secure_aggregation`` the nodes' replies arrive as one masked total
    (a single entry; see tasks/secure.py).
    """
    if params.secure_aggregation:
        return secure_broadcast(grid, action, params, list(node_ids), group_id)
    by_node, errors = exchange(grid, action, params, node_ids, group_id)
    if errors:
        raise FederatedErrors.combine(errors)
    if not by_node:
        raise TaskFailed("no node replied", rule="task.no_replies", fix="start nodes first")
    return by_node


__all__ = ["broadcast"]
