"""The grid a training strategy drives: the task's grid, plus what a strategy would drop.

Flower's strategies log error replies and go on; a researcher must see
which node refused and why (e.g. ``privacy.budget``) and which went silent,
so the wrapper keeps both.

It is also where the nodes' typed releases become the replies a strategy
reads. A node answers ``train`` and ``evaluate`` with sums (``records.py``);
the wrapper turns every reply -- each node's in a plain run, the single
masked total under ``secure_aggregation``, whose secure-sum stages it runs
-- into Flower's layout (``arrays``, ``metrics`` with ``num-examples``)
through the same ``for_strategy``, before the strategy sees it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from oncofed.kernel.errors import OncofedError
from oncofed.kernel.flower import Run, reply_error
from oncofed.tasks.messaging import exchange_messages, report_progress
from oncofed.tasks.secure import secure_sum
from oncofed.tasks.training.records import for_strategy, own_privacy, reply_nodes

MODEL_MESSAGES = ("train", "evaluate")
"""The strategy's messages, whose replies are releases to turn into its layout."""


class WatchedGrid(Grid):
    """The task's grid, keeping the refusals a strategy would only log.

    Flower's strategies drop error replies and go on; a researcher must see
    which node refused and why (e.g. ``privacy.budget``), so the task raises
    them once a round has too few updates.
    """

    def __init__(self, grid: Grid, names: dict[int, str], secure: bool) -> None:
        self._grid = grid
        self._names = names
        self._secure = secure
        self.errors: list[OncofedError] = []
        self.silent: list[str] = []  # nodes the last exchange asked that never answered

    @property
    def run(self) -> Run:
        return self._grid.run

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def report(self, detail: str) -> None:
        report_progress(self._grid, detail)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        sent = list(messages)
        model = bool(sent) and sent[0].metadata.message_type in MODEL_MESSAGES
        if self._secure and model:
            replies = [self._secure_sum(sent, timeout)]
        else:
            replies = list(self._grid.send_and_receive(sent, timeout=timeout))
            if model:
                for reply in replies:
                    if not reply.has_error():
                        reply.content = for_strategy(reply.content, own_privacy(reply.content))
        self.errors.extend(reply_error(r) for r in replies if r.has_error())
        answered = {
            name
            for r in replies
            for name in (
                [self._name(r.metadata.src_node_id)] if r.has_error() else reply_nodes(r.content)
            )
        }
        asked = (self._name(m.metadata.dst_node_id) for m in sent)
        self.silent = sorted(name for name in asked if name not in answered)
        return replies

    def _name(self, node_id: int) -> str:
        return self._names.get(node_id, str(node_id))

    def _secure_sum(self, sent: list[Message], timeout: float | None) -> Message:
        """The strategy's messages, each node's reply masked, returned as one summed reply."""
        by_node = {m.metadata.dst_node_id: m for m in sent}

        def send(
            ids: list[int], extra: Mapping[int, Mapping[str, ConfigRecord]]
        ) -> tuple[dict[int, RecordDict], list[OncofedError]]:
            staged = []
            for node_id in ids:
                template = by_node[node_id]
                content = RecordDict(dict(template.content.items()))
                for name, record in extra.get(node_id, {}).items():
                    content[name] = record
                staged.append(
                    Message(
                        content,
                        node_id,
                        template.metadata.message_type,
                        group_id=template.metadata.group_id,
                        ttl=template.metadata.ttl,
                    )
                )
            wait = timeout if timeout is not None else sent[0].metadata.ttl
            return exchange_messages(self._grid, staged, wait)

        summed = secure_sum(send, sorted(by_node))
        return Message(for_strategy(summed.total, summed.privacy), reply_to=sent[0])


__all__ = ["MODEL_MESSAGES", "WatchedGrid"]
