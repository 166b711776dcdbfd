"""Federated training on breast cancer data over real node processes.

The oracle is the same model trained on the pooled rows (scikit-learn's
LogisticRegression on the same standardised features), scored on the same
held-out patients. The data are split across 4 centres non-IID: each centre
gets a different share of malignant tumours. The federated held-out AUC is
checked against scikit-learn's on the nodes' own held-out rows.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from flwr.app import RecordDict

from oncofed.client.sandbox import Sandbox
from oncofed.kernel.errors import OncofedError
from oncofed.kernel.flower import from_bytes
from oncofed.kernel.schema import DatasetSchema, infer_schema
from oncofed.node.mods import FAILPOINT
from oncofed.privacy.policy import DatasetPrivacy, NodePolicy
from oncofed.privacy.release import RELEASE_RECORD
from oncofed.tasks.training import TrainedModel

pytest.importorskip("torch")
pytest.importorskip("opacus")
sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_breast_cancer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

pytestmark = pytest.mark.slow

FEATURES = ["mean_radius", "mean_texture", "mean_smoothness", "worst_concavity", "worst_area"]
# What an operator would declare as the public range of each feature (DP training scales by it).
BOUNDS = {
    "mean_radius": (5.0, 30.0),
    "mean_texture": (5.0, 45.0),
    "mean_smoothness": (0.0, 0.2),
    "worst_concavity": (0.0, 1.5),
    "worst_area": (100.0, 4500.0),
}


def declared(frame: pd.DataFrame) -> DatasetSchema:
    schema = infer_schema(frame)
    columns = {
        name: spec.model_copy(update={"bounds": BOUNDS.get(name)})
        for name, spec in schema.columns.items()
    }
    return schema.model_copy(update={"columns": columns})


@pytest.fixture(scope="module")
def tumours() -> tuple[pd.DataFrame, pd.DataFrame]:
    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns=lambda c: c.replace(" ", "_"))
    frame["malignant"] = 1 - frame.pop("target")  # sklearn: 0 = malignant
    rng = np.random.default_rng(2026)
    test = rng.random(len(frame)) < 0.2
    train = frame[~test].copy()
    # Non-IID: centre-0 mostly malignant, centre-3 mostly benign.
    train["centre"] = _assign(train["malignant"].to_numpy(), rng)
    return train.reset_index(drop=True), frame[test].reset_index(drop=True)


def _assign(malignant: np.ndarray, rng: np.random.Generator) -> list[str]:
    shares = {1: [0.4, 0.3, 0.2, 0.1], 0: [0.1, 0.2, 0.3, 0.4]}
    return [f"centre-{rng.choice(4, p=shares[int(m)])}" for m in malignant]


@pytest.fixture(scope="module")
def net(tumours: tuple[pd.DataFrame, pd.DataFrame]) -> Iterator[Sandbox]:
    train, _ = tumours
    # A round of an 8-round run at epsilon 3 costs about 1.1 alone: allow that per release.
    privacy = DatasetPrivacy(epsilon=3.0, delta=1e-5, max_epsilon_per_release=3.0)
    policy = NodePolicy(dp={"tumours": privacy})
    with Sandbox.from_frame(
        train,
        split_by="centre",
        dataset="tumours",
        policy=policy,
        schema=declared(train),
        release="exact",
    ) as sandbox:
        yield sandbox


def _pooled_accuracy(train: pd.DataFrame, test: pd.DataFrame) -> float:
    mean, std = train[FEATURES].mean(), train[FEATURES].std()
    model = LogisticRegression(max_iter=1000).fit(
        (train[FEATURES] - mean) / std, train["malignant"]
    )
    return float(model.score((test[FEATURES] - mean) / std, test["malignant"]))


def test_federated_logistic_regression_matches_pooled_accuracy(
    net: Sandbox, tumours: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    train, test = tumours
    with net.session(dataset="tumours", progress=False) as s:
        model = s.train(FEATURES, "malignant", rounds=30, local_epochs=3, learning_rate=0.1)
    accuracy = float(np.mean(model.predict(test) == test["malignant"]))
    pooled = _pooled_accuracy(train, test)
    assert abs(accuracy - pooled) <= 0.01 + 1 / len(test), (accuracy, pooled)
    assert model.rounds == 30 and model.nodes == sorted(net.node_names)
    assert model.history[-1].eval_accuracy is not None
    assert model.history[-1].train_loss < model.history[0].train_loss
    np.testing.assert_allclose(model.standardisation.mean, train[FEATURES].mean(), rtol=1e-12)


def held_out(frame: pd.DataFrame, split_by: str, test_fraction: float = 0.2) -> pd.DataFrame:
    """Every node's held-out rows, drawn as the request's seed (0) draws them at the node."""
    parts = []
    for _, rows in sorted(frame.groupby(split_by)):
        order = np.random.default_rng(0).permutation(len(rows))
        parts.append(rows.iloc[order[: round(test_fraction * len(rows))]])
    return pd.concat(parts)


def test_an_mlp_learns_and_its_pooled_auc_is_exact(
    net: Sandbox, tumours: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    train, test = tumours
    with net.session(dataset="tumours", progress=False) as s:
        model = s.train(
            FEATURES,
            "malignant",
            model="mlp",
            hidden=[8],
            rounds=10,
            local_epochs=3,
            evaluate_every=5,
        )
    assert [r.eval_auc is not None for r in model.history] == [r in (5, 10) for r in range(1, 11)]
    accuracy = float(np.mean(model.predict(test) == test["malignant"]))
    assert accuracy >= _pooled_accuracy(train, test) - 0.03, accuracy
    assert model.state["0.weight"] and len(model.state["0.weight"]) == 8
    # The AUC from summed score histograms against scikit-learn on the same rows.
    rows = held_out(train, "centre")
    expected = roc_auc_score(rows["malignant"], model.predict_proba(rows))
    assert model.history[-1].eval_auc == pytest.approx(expected, abs=2e-3)
    assert model.history[-1].eval_accuracy == pytest.approx(
        np.mean(model.predict(rows) == rows["malignant"]), abs=1e-12
    )


def test_dp_sgd_at_epsilon_3_is_accurate_and_charged(
    net: Sandbox, tumours: tuple[pd.DataFrame, pd.DataFrame], tmp_path
) -> None:
    _, test = tumours
    with net.session(dataset="tumours", progress=False, permit="dp-training") as s:
        model = s.train(
            FEATURES,
            "malignant",
            rounds=8,
            learning_rate=0.2,
            # expected_rows: a public figure near each centre's 96-131 rows, never a count.
            dp={"epsilon": 3.0, "delta": 1e-5, "max_grad_norm": 1.0, "expected_rows": 110},
            # Masked updates: each node's privacy record still says what it was charged.
            secure_aggregation=True,
        )
    accuracy = float(np.mean(model.predict(test) == test["malignant"]))
    assert accuracy >= 0.90, accuracy
    assert set(model.epsilon) == set(net.node_names)
    assert all(2.0 < eps <= 3.0 for eps in model.epsilon.values()), model.epsilon
    # The charge follows from the request alone, so every node's is the same.
    assert len(set(model.epsilon.values())) == 1, model.epsilon
    # Nodes release no loss under DP, so the run reports none.
    assert all(r.train_loss is None for r in model.history)
    rows = _budget_rows(net, "centre-0")
    assert rows["dp-training"]["releases"] == 8
    assert rows["dp-training"]["spent_epsilon"] == pytest.approx(
        model.epsilon["centre-0"], rel=1e-6
    )
    path = tmp_path / "model.json"
    model.save(path)
    again = type(model).load(path)
    np.testing.assert_array_equal(again.predict_proba(test), model.predict_proba(test))
    module = again.to_module()
    assert module[0].weight.shape == (1, len(FEATURES))


def test_a_node_that_dies_mid_round(tumours: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    """Killed after training, before its charge: the round goes on without it if it may."""
    train, _ = tumours
    # Every release under DP (the default): training scales by the declared bounds.
    privacy = DatasetPrivacy(epsilon=6.0, delta=1e-5, max_epsilon_per_release=3.0)
    policy = NodePolicy(dp={"tumours": privacy})
    victim = "centre-2"
    dp = {"epsilon": 3.0, "delta": 1e-5, "expected_rows": 110}
    with Sandbox.from_frame(
        train, split_by="centre", dataset="tumours", policy=policy, schema=declared(train)
    ) as net:
        with (
            net.session(dataset="tumours", progress=False) as s,
            pytest.raises(OncofedError) as unbounded,
        ):
            s.train([*FEATURES, "mean_area"], "malignant", dp=dp, scaling="bounds", min_nodes=4)
        assert unbounded.value.rule == "training.bounds" and "mean_area" in str(unbounded.value)
        # One round first, so the survivors' first import of torch is not what the timeout meets.
        with net.session(dataset="tumours", progress=False, permit="warm-up") as s:
            s.train(FEATURES, "malignant", rounds=1, dp=dp, scaling="bounds", min_nodes=4)
        net.stop_node(victim)
        net.start_node(victim, env={FAILPOINT: "before-ledger-charge"})
        net.wait_for_nodes(net.node_names)
        with net.session(dataset="tumours", progress=False, permit="dies") as s:
            model = s.train(
                FEATURES, "malignant", rounds=3, dp=dp, scaling="bounds", min_nodes=3, timeout=15
            )
        assert net.wait_node_exit(victim, 5) == 137
        survivors = sorted(set(net.node_names) - {victim})
        assert [r.nodes for r in model.history] == [survivors] * 3
        assert sorted(model.epsilon) == survivors
        assert "dies" not in _budget_rows(net, victim), "the dead node never sent an update"
        assert _budget_rows(net, survivors[0])["dies"]["releases"] == 3

        net.start_node(victim, env={FAILPOINT: "before-ledger-charge"})
        net.wait_for_nodes(net.node_names)
        with (
            net.session(dataset="tumours", progress=False, permit="dies-4") as s,
            pytest.raises(OncofedError) as refused,
        ):
            s.train(
                FEATURES, "malignant", rounds=3, dp=dp, scaling="bounds", min_nodes=4, timeout=15
            )
        assert refused.value.rule == "training.min_nodes"
        assert f"{victim} did not reply within 15 s" in str(refused.value)
        assert "dies-4" not in _budget_rows(net, victim)


def _budget_rows(net: Sandbox, node: str) -> dict[str, dict[str, object]]:
    """``oncofed node budget --json``, by permit, as an operator would read it."""
    run = subprocess.run(
        [sys.executable, "-m", "oncofed", "node", "budget", str(net.node_config(node)), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {r["permit"]: r for r in map(json.loads, run.stdout.splitlines())}


def test_the_researcher_sees_each_round_while_it_runs(net: Sandbox) -> None:
    seen: set[str] = set()
    with net.session(dataset="tumours", progress=False) as s:
        task_id = s.submit(
            "train",
            dataset="tumours",
            features=FEATURES,
            label="malignant",
            rounds=6,
            local_epochs=5,
        )
        while (status := s.status(task_id)).state in ("queued", "running"):
            seen.add(status.detail)
            time.sleep(0.05)
        model = s.result(task_id)
    rounds = [d for d in seen if d.startswith("round ")]
    assert len(rounds) >= 2, seen  # the detail moved on while the task ran
    assert model.rounds == 6
    for detail in rounds:
        assert re.fullmatch(
            r"round [1-6]/6 · 4 nodes · loss \S+ · eval loss \S+ · accuracy \S+ · AUC \S+",
            detail,
        ), detail


def _stored_replies(net: Sandbox, task_id: str) -> list[tuple[str, RecordDict]]:
    """(message type, content) of every reply the coordinator stored for a task."""
    with sqlite3.connect(net.workdir / "coordinator.db") as db:
        rows = db.execute(
            "SELECT m.message_type, r.payload FROM replies r JOIN messages m "
            "ON r.message_id = m.message_id WHERE m.task_id = ?",
            (task_id,),
        ).fetchall()
    return [(kind, from_bytes(payload).content) for kind, payload in rows]


def test_secure_aggregation_of_updates_hides_each_nodes_model(net: Sandbox) -> None:
    """Same model as a plain run, while the coordinator stores masked vectors only."""
    request = {
        "dataset": "tumours",
        "features": FEATURES,
        "label": "malignant",
        "rounds": 3,
        "local_epochs": 2,
        "evaluate_every": 3,
    }
    with net.session(dataset="tumours", progress=False) as s:
        plain_id = s.submit("train", **request)
        plain = s.result(plain_id)
        secure_id = s.submit("train", **{**request, "secure_aggregation": True})
        secure = s.result(secure_id)
    assert isinstance(plain, TrainedModel) and isinstance(secure, TrainedModel)
    for key, weights in plain.state.items():
        np.testing.assert_allclose(secure.state[key], weights, rtol=0, atol=1e-6)
    assert secure.nodes == plain.nodes == sorted(net.node_names)
    assert secure.history[-1].eval_accuracy == pytest.approx(plain.history[-1].eval_accuracy)
    assert secure.history[-1].eval_auc == pytest.approx(plain.history[-1].eval_auc, abs=1e-3)

    def model_replies(task_id: str) -> list[RecordDict]:
        return [c for kind, c in _stored_replies(net, task_id) if kind in ("train", "evaluate")]

    def holds_weights(content: RecordDict) -> bool:
        numbers = content.array_records.get(RELEASE_RECORD)
        return numbers is not None and any(key.startswith("weights.") for key in numbers)

    # The plain run's stored replies hold every node's weights: the inspection can see them.
    assert sum(holds_weights(c) for c in model_replies(plain_id)) == 4 * 3
    stored = model_replies(secure_id)
    assert stored, "the secure run stored no replies to inspect"
    for content in stored:
        assert RELEASE_RECORD not in content.array_records and not content.metric_records
        for record in content.array_records.values():
            assert all(array.numpy().dtype == np.uint64 for array in record.values())
