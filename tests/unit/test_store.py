"""Coordinator state: one shared test class, run on SQLite and on PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from oncofed.coordinator.db import Base, open_database
from oncofed.coordinator.store import OutgoingMessage, Store


def _message(mid: str, dst: int, ttl: float = 60.0) -> OutgoingMessage:
    return OutgoingMessage(
        mid, dst, "query.describe", b"payload-" + mid.encode(), time.time() + ttl
    )


class StoreContract:
    """Behaviour every database backend must show."""

    @pytest.fixture
    def url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def store(self, url: str) -> Store:
        return Store(open_database(url))

    def test_migrations_match_the_models(self, store: Store) -> None:
        with store.engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert diff == []
        assert {"nodes", "tasks", "messages", "replies", "alembic_version"} <= set(
            inspect(store.engine).get_table_names()
        )

    def test_reopening_migrates_nothing_and_keeps_data(self, url: str, store: Store) -> None:
        store.register_node("centre-a", "1", "{}")
        again = Store(open_database(url))
        assert [n.name for n in again.nodes()] == ["centre-a"]

    def test_node_ids_are_stable_per_name(self, store: Store) -> None:
        first = store.register_node("centre-a", "0.1", "{}")
        store.set_online(first, False)
        assert store.register_node("centre-a", "0.2", '{"lung": {}}') == first
        other = store.register_node("centre-b", "0.2", "{}")
        assert other != first and first > 1 and other > 1
        assert store.online_node_ids() == sorted([first, other])
        node = next(n for n in store.nodes() if n.name == "centre-a")
        assert (node.version, node.online) == ("0.2", True)
        store.mark_all_offline()
        assert store.online_node_ids() == []

    def test_messages_flow_queue_deliver_requeue_answer(self, store: Store) -> None:
        task = store.create_task("describe", "{}", "ada")
        store.put_messages(task.task_id, [_message("m1", 5), _message("m2", 6)])
        store.put_messages(task.task_id, [_message("m1", 5)])  # a replay adds nothing
        assert store.task(task.task_id).expected == 2  # type: ignore[union-attr]
        assert store.take_undelivered(5) == [("m1", b"payload-m1")]
        assert store.take_undelivered(5) == []
        assert store.requeue_unanswered(5) == 1
        assert [m for m, _ in store.take_undelivered(5)] == ["m1"]
        assert not store.put_reply("m1", 6, b"forged"), "a node may only answer its own messages"
        assert store.put_reply("m1", 5, b"reply")
        assert not store.put_reply("m1", 5, b"again"), "an answer cannot be replaced"
        assert store.replies(["m1", "m2"]) == {"m1": b"reply"}
        assert store.task(task.task_id).replies == 1  # type: ignore[union-attr]
        assert store.requeue_unanswered(5) == 0

    def test_expired_messages_are_not_delivered_and_are_reported(self, store: Store) -> None:
        task = store.create_task("describe", "{}", "ada")
        store.put_messages(task.task_id, [_message("old", 5, ttl=-1), _message("new", 5)])
        assert [m for m, _ in store.take_undelivered(5)] == ["new"]
        assert store.expired(["old", "new"]) == [("old", 5, False)]

    def test_a_message_held_for_approval_goes_out_again_only_when_due(self, store: Store) -> None:
        task = store.create_task("describe", "{}", "ada")
        store.put_messages(task.task_id, [_message("m1", 5)])
        assert [m for m, _ in store.take_undelivered(5)] == ["m1"]
        waited: list[float] = []

        def later(seconds: float) -> float:
            waited.append(seconds)
            return seconds + 60

        assert store.defer("m1", 6, later) is None, "only the addressee may hold it"
        assert store.defer("m1", 5, later) == task.task_id
        assert 0 <= waited[-1] < 30, "the delay is told how long the message has waited"
        assert store.take_undelivered(5) == [], "held: not before its time"
        assert store.defer("m1", 5, lambda _waited: -1.0) == task.task_id
        assert [m for m, _ in store.take_undelivered(5)] == ["m1"]
        assert store.put_reply("m1", 5, b"approved and computed")
        assert store.defer("m1", 5, later) is None, "an answered message stays answered"
        store.put_messages(task.task_id, [_message("m2", 5, ttl=-1)])
        store.defer("m2", 5, later)
        assert store.expired(["m2"]) == [("m2", 5, True)]

    def test_a_task_keeps_its_first_outcome(self, store: Store) -> None:
        task = store.create_task("describe", "{}", "ada")
        assert store.unfinished_task_ids() == [task.task_id]
        assert store.start_task(task.task_id)
        assert store.finish_task(task.task_id, "cancelled", detail="by researcher")
        assert not store.finish_task(task.task_id, "succeeded", detail="late", result="{}")
        view = store.task(task.task_id)
        assert view is not None and view.state == "cancelled" and view.result is None
        assert not store.start_task(task.task_id)
        assert store.is_cancelled(task.task_id)
        assert store.unfinished_task_ids() == []


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.mark.postgres
class TestPostgresStore(StoreContract):
    @pytest.fixture
    def url(self, postgres_url: str) -> str:
        return postgres_url


def test_bad_database_url_is_a_config_error(tmp_path: Path) -> None:
    from oncofed.kernel.errors import ConfigError, DatabaseUnavailable, ExitCode

    with pytest.raises(ConfigError) as caught:
        open_database("nosuchdb://x")
    assert caught.value.rule == "coordinator.database"
    with pytest.raises(DatabaseUnavailable) as unreachable:
        open_database("postgresql+psycopg://postgres@127.0.0.1:1/none")
    assert unreachable.value.exit_code == ExitCode.UNAVAILABLE
