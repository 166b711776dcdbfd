"""Federated logistic regression on breast cancer data over real node processes.

The oracle is the same model trained on the pooled rows (scikit-learn's
LogisticRegression on the same standardised features), scored on the same
held-out patients. The data are split across 4 centres non-IID: each centre
gets a different share of malignant tumours.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from oncofed.privacy.policy import DatasetPrivacy, NodePolicy
from oncofed.sandbox import Sandbox

pytest.importorskip("torch")
pytest.importorskip("opacus")
sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_breast_cancer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

pytestmark = pytest.mark.slow

FEATURES = ["mean_radius", "mean_texture", "mean_smoothness", "worst_concavity", "worst_area"]


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
    with Sandbox.from_frame(train, split_by="centre", dataset="tumours", policy=policy) as sandbox:
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


def test_dp_sgd_at_epsilon_3_is_accurate_and_charged(
    net: Sandbox, tumours: tuple[pd.DataFrame, pd.DataFrame], tmp_path
) -> None:
    _, test = tumours
    with net.session(dataset="tumours", progress=False, study="dp-training") as s:
        model = s.train(
            FEATURES,
            "malignant",
            rounds=8,
            learning_rate=0.2,
            dp={"epsilon": 3.0, "delta": 1e-5, "max_grad_norm": 1.0},
        )
    accuracy = float(np.mean(model.predict(test) == test["malignant"]))
    assert accuracy >= 0.90, accuracy
    assert set(model.epsilon) == set(net.node_names)
    assert all(2.0 < eps <= 3.0 for eps in model.epsilon.values()), model.epsilon
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "oncofed",
            "node",
            "budget",
            str(net.node_config("centre-0")),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {r["study"]: r for r in map(json.loads, run.stdout.splitlines())}
    assert rows["dp-training"]["releases"] == 8
    assert rows["dp-training"]["spent_epsilon"] == pytest.approx(
        model.epsilon["centre-0"], rel=1e-6
    )
    path = tmp_path / "model.json"
    model.save(path)
    again = type(model).load(path)
    np.testing.assert_array_equal(again.predict_proba(test), model.predict_proba(test))
    module = again.to_module()
    assert module.weight.shape == (1, len(FEATURES))
