"""The training task's pieces against independent oracles.

statsmodels' PHReg (Breslow ties) for the Cox loss, lifelines for Harrell's C,
scikit-learn for the AUC, PyTorch's own modules for the NumPy forward pass.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from oncofed.kernel.schema import infer_schema
from oncofed.tasks.base import LocalDataset
from oncofed.tasks.training import architectures
from oncofed.tasks.training.node import (
    binary_metrics,
    concordance_counts,
    design_node,
    survival_metrics,
)
from oncofed.tasks.training.params import TrainParams
from oncofed.tasks.training.records import evaluation_metrics
from oncofed.tasks.training.server import pooled_metrics
from tests.oracle import PERMISSIVE

torch = pytest.importorskip("torch")


def _survival(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    time = rng.integers(1, 30, n).astype(float)  # many ties
    event = (rng.random(n) < 0.6).astype(float)
    return x, time, event


def test_cox_loss_is_statsmodels_breslow_partial_likelihood() -> None:
    from statsmodels.duration.hazard_regression import PHReg

    x, time, event = _survival(200, 1)
    beta = np.array([0.3, -0.5, 0.1])
    expected = PHReg(time, x, status=event, ties="breslow").loglike(beta)
    log_risk = torch.from_numpy(x @ beta)
    loss = architectures.cox_loss(log_risk, torch.from_numpy(time), torch.from_numpy(event))
    assert float(loss) * event.sum() == pytest.approx(-expected, rel=1e-12)


def test_concordance_counts_are_lifelines_harrell_c() -> None:
    from lifelines.utils import concordance_index

    for seed in range(5):
        _, time, event = _survival(300, seed)
        risk = np.random.default_rng(seed + 10).integers(0, 12, 300).astype(float)  # ties
        concordant, tied, comparable = concordance_counts(risk, time, event)
        expected = concordance_index(time, -risk, event)
        assert (concordant + tied / 2) / comparable == pytest.approx(expected, abs=1e-12)


def test_pooled_auc_from_score_histograms_is_sklearns() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    params = TrainParams(dataset="d", features=["a"], label="y")
    parts, logits, labels = [], [], []
    for n in (50, 120, 80):  # three nodes
        y = (rng.random(n) < 0.4).astype(float)
        logit = rng.normal(size=n) + 1.5 * y
        parts.append(evaluation_metrics(binary_metrics(logit, y)))
        logits.append(logit)
        labels.append(y)
    pooled = pooled_metrics(params, parts)
    y, logit = np.concatenate(labels), np.concatenate(logits)
    assert pooled["auc"] == pytest.approx(roc_auc_score(y, logit), abs=1e-3)
    assert pooled["accuracy"] == pytest.approx(np.mean((logit >= 0) == (y == 1)), abs=1e-12)
    log_loss = np.mean(np.logaddexp(0, -logit) * y + np.logaddexp(0, logit) * (1 - y))
    assert pooled["loss"] == pytest.approx(log_loss, rel=1e-12)


def test_pooled_concordance_adds_the_nodes_pairs() -> None:
    params = TrainParams(dataset="d", features=["a"], duration="t", event="e", model="cox_mlp")
    parts, score, comparable = [], 0.0, 0
    for seed in (1, 2):
        x, time, event = _survival(60, seed)
        risk = x[:, 0]
        parts.append(evaluation_metrics(survival_metrics(risk, time, event)))
        c, t, m = concordance_counts(risk, time, event)
        score, comparable = score + c + t / 2, comparable + m
    assert pooled_metrics(params, parts)["concordance"] == pytest.approx(score / comparable)


@pytest.mark.parametrize("hidden", [(), (5,), (4, 3)])
def test_numpy_forward_is_the_torch_module(hidden: tuple[int, ...]) -> None:
    state = architectures.initial_state(6, hidden, seed=4)
    module = architectures.build(6, hidden)
    assert sorted(state) == sorted(module.state_dict())
    architectures.load(module, state)
    x = np.random.default_rng(5).normal(size=(20, 6))
    expected = module(torch.from_numpy(x)).squeeze(-1).detach().numpy()
    np.testing.assert_allclose(architectures.forward(state, hidden, x), expected, rtol=1e-12)


def test_initial_state_depends_only_on_the_seed() -> None:
    first = architectures.initial_state(4, (3,), seed=1)
    assert all(
        np.array_equal(v, architectures.initial_state(4, (3,), 1)[k]) for k, v in first.items()
    )
    assert not np.array_equal(
        first["0.weight"], architectures.initial_state(4, (3,), 2)["0.weight"]
    )


def test_the_design_reply_says_nothing_about_the_rows() -> None:
    """A design message is answered without DP on a DP dataset: it must not read rows."""
    rng = np.random.default_rng(0)
    frames = [
        pd.DataFrame({"age": rng.normal(60, 9, n), "grade": rng.choice(["I", "II"], n)})
        for n in (30, 500)
    ]
    schema = infer_schema(pd.concat(frames))
    params = TrainParams(dataset="d", features="age + C(grade)", label="age2")
    replies = [
        design_node(params, LocalDataset("centre-x", "d", schema, frame, PERMISSIVE))
        for frame in frames
    ]
    first, second = replies
    assert first == second
    assert first.columns == ("age", "C(grade)[T.II]")
    assert first.agreed_levels() == {"grade": ("I", "II")}
    assert not list(first.numbers())  # text from the schema only
    assert params.reads_rows("design") is False
    assert params.reads_rows("train") and params.reads_rows("evaluate")


def test_plain_and_masked_updates_reach_the_strategy_as_the_same_mean() -> None:
    """Nodes release sums; the strategy gets weights and mean loss back, one reply or the total."""
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    from oncofed.privacy.gate import check_release
    from oncofed.privacy.secagg.records import flatten, unflatten
    from oncofed.tasks.training import TASK
    from oncofed.tasks.training.records import (
        ARRAYS,
        EXAMPLES,
        METRICS,
        ModelUpdate,
        for_strategy,
        own_privacy,
    )

    rng = np.random.default_rng(7)
    weights = [{"0.weight": rng.normal(size=(1, 3)), "0.bias": rng.normal(size=1)} for _ in "ab"]
    rows, losses = [40, 120], [0.7, 0.4]
    contents = []
    for node, w, n, loss in zip("ab", weights, rows, losses, strict=True):
        update = ModelUpdate(weights={k: v * n for k, v in w.items()}, rows=n, loss=loss * n)
        check_release(update, TASK.releases, task="train", node=node)
        contents.append(update.to_content(node))
    plain = [for_strategy(c, own_privacy(c)) for c in contents]
    for reply, w, n, loss in zip(plain, weights, rows, losses, strict=True):
        assert reply[METRICS][EXAMPLES] == n
        assert reply[METRICS]["train-loss"] == pytest.approx(loss, rel=1e-12)
        for key, value in w.items():
            np.testing.assert_allclose(reply[ARRAYS][key].numpy(), value, rtol=1e-12)
    mean = aggregate_arrayrecords(plain, EXAMPLES)

    # The secure sum's total: the nodes' vectors added (the masks cancel), text from the first.
    parts = [flatten(c, nodes=2) for c in contents]
    clear = parts[0][2]
    clear["meta"]["node"] = "a, b"
    total = unflatten(parts[0][0] + parts[1][0], parts[0][1], clear)
    masked = for_strategy(total, {})
    assert masked[METRICS][EXAMPLES] == sum(rows)
    assert masked[METRICS]["train-loss"] == pytest.approx(np.average(losses, weights=rows))
    for key in mean:
        np.testing.assert_allclose(masked[ARRAYS][key].numpy(), mean[key].numpy(), atol=1e-6)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": "cox_mlp", "dp": {"epsilon": 1, "delta": 1e-5}}, "risk set"),
        ({"model": "cox_mlp"}, "needs duration"),
        ({"hidden": (4,)}, "no hidden layers"),
        ({"features": "age:sex"}, "plain columns"),
        ({"features": "np.log(age)"}, "plain columns"),
        ({"features": ["age", "y"]}, "both a feature and the outcome"),
        ({"model": "mlp", "hidden": (300,)}, "between 1 and 256"),
    ],
)
def test_bad_training_requests_are_refused_before_sending(
    changes: dict[str, object], message: str
) -> None:
    request: dict[str, object] = {"dataset": "d", "features": ["age"], "label": "y", **changes}
    if request.get("model") == "cox_mlp" and "dp" not in changes:
        request.pop("label")
    elif request.get("model") == "cox_mlp":
        request.update(label=None, duration="t", event="e")
    with pytest.raises(ValueError, match=message):
        TrainParams.model_validate(request)
