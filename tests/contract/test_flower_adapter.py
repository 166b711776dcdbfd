"""What oncofed relies on from Flower 1.41. A Flower upgrade that breaks any of
this breaks here first, and only ``kernel/flower.py`` should need changing."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from oncofed.coordinator.grid import GovernedGrid
from oncofed.kernel.errors import NodeRefusal, OncofedError
from oncofed.kernel.flower import (
    content_digest,
    error_reply,
    from_bytes,
    install_process_identity,
    node_context,
    params_content,
    params_json,
    reply_error,
    stamp,
    to_bytes,
)


@pytest.fixture(autouse=True)
def _identity() -> None:
    install_process_identity()


def _instruction(dst: int = 7) -> Message:
    content = params_content('{"dataset": "lung"}', participants=3)
    content["arrays"] = ArrayRecord({"x": Array(np.arange(4.0))})
    return Message(content, dst, "query.describe", group_id="round-1", ttl=30)


def test_message_round_trips_through_bytes_with_ids_stamped() -> None:
    message = _instruction()
    stamp(message, run_id=42, message_id="m-1")
    back = from_bytes(to_bytes(message))
    assert back.metadata.run_id == 42
    assert back.metadata.message_id == "m-1"
    assert back.metadata.dst_node_id == 7
    assert back.metadata.message_type == "query.describe"
    assert back.metadata.group_id == "round-1"
    assert back.metadata.ttl == 30
    assert params_json(back) == '{"dataset": "lung"}'
    np.testing.assert_array_equal(back.content["arrays"]["x"].numpy(), np.arange(4.0))


def test_reply_metadata_points_back_to_the_instruction() -> None:
    message = _instruction()
    stamp(message, run_id=42, message_id="m-2")
    reply = Message(RecordDict({"meta": ConfigRecord({"node": "a"})}), reply_to=message)
    back = from_bytes(to_bytes(reply))
    assert back.metadata.reply_to_message_id == "m-2"
    assert back.metadata.src_node_id == 7
    assert back.metadata.run_id == 42


def test_typed_error_survives_an_error_reply() -> None:
    message = _instruction()
    stamp(message, run_id=1, message_id="m-3")
    refusal = NodeRefusal("too small", rule="privacy.min_cell", node="centre-a", fix="widen")
    back = from_bytes(to_bytes(error_reply(message, refusal)))
    assert back.has_error()
    error = reply_error(back)
    assert isinstance(error, NodeRefusal)
    assert (error.rule, error.node, error.fix) == ("privacy.min_cell", "centre-a", "widen")


def test_content_digest_ignores_metadata_and_survives_serialisation() -> None:
    a, b = _instruction(dst=3), _instruction(dst=3)
    stamp(a, run_id=1, message_id="x")
    assert content_digest(a) == content_digest(b)
    assert content_digest(from_bytes(to_bytes(a))) == content_digest(a)
    changed = Message(params_content('{"dataset": "gbsg2"}', participants=3), 3, "query.describe")
    assert content_digest(changed) != content_digest(a)


def test_client_app_dispatches_query_actions_through_mods_in_order() -> None:
    calls: list[str] = []

    def outer(msg: Message, ctx: Context, call_next):  # type: ignore[no-untyped-def]
        calls.append("outer")
        return call_next(msg, ctx)

    def inner(msg: Message, ctx: Context, call_next):  # type: ignore[no-untyped-def]
        calls.append("inner")
        return call_next(msg, ctx)

    app = ClientApp(mods=[outer, inner])

    @app.query("describe")
    def handle(msg: Message, ctx: Context) -> Message:
        calls.append("handler")
        return Message(
            RecordDict({"ok": ConfigRecord({"node": ctx.node_config["n"]})}), reply_to=msg
        )

    message = _instruction()
    stamp(message, run_id=1, message_id="m-4")
    reply = app(message, node_context(7, 1, {"n": "a"}))
    assert calls == ["outer", "inner", "handler"]
    assert reply.content["ok"]["node"] == "a"


def test_governed_grid_implements_every_abstract_grid_method() -> None:
    assert not inspect.isabstract(GovernedGrid)
    abstract = {
        name for name, value in vars(Grid).items() if getattr(value, "__isabstractmethod__", False)
    }
    assert abstract <= set(vars(GovernedGrid))


def test_unknown_error_codes_from_flower_become_oncofed_errors() -> None:
    from flwr.app import Error

    message = _instruction()
    stamp(message, run_id=1, message_id="m-5")
    foreign = Message(Error(code=0, reason="boom"), reply_to=message)
    error = reply_error(foreign)
    assert type(error) is OncofedError
    assert "boom" in str(error)
