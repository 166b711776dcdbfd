"""A Cox-loss MLP trained across 3 nodes on the GBSG2 breast cancer trial data.

The oracles: lifelines' Cox model fitted on the pooled training rows, whose
concordance on the same held-out patients the federated network must reach;
and Harrell's pairs counted by brute force on the nodes' own held-out rows,
which the federated evaluation must reproduce exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from oncofed.client.sandbox import Sandbox
from tests.integration.test_training import held_out

pytest.importorskip("torch")
lifelines = pytest.importorskip("lifelines")
from lifelines import CoxPHFitter  # noqa: E402
from lifelines.datasets import load_gbsg2  # noqa: E402
from lifelines.utils import concordance_index  # noqa: E402

pytestmark = pytest.mark.slow

FEATURES = "age + tsize + pnodes + progrec + estrec + C(horTh) + C(menostat) + C(tgrade)"


@pytest.fixture(scope="module")
def trial() -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = load_gbsg2()
    rng = np.random.default_rng(7)
    test = rng.random(len(frame)) < 0.25
    train = frame[~test].copy()
    train["centre"] = [f"centre-{i}" for i in rng.integers(0, 3, len(train))]
    return train.reset_index(drop=True), frame[test].reset_index(drop=True)


@pytest.fixture(scope="module")
def net(trial: tuple[pd.DataFrame, pd.DataFrame]) -> Iterator[Sandbox]:
    with Sandbox.from_frame(
        trial[0], split_by="centre", dataset="gbsg2", release="exact"
    ) as sandbox:
        yield sandbox


def _pairs(frame: pd.DataFrame, risk: np.ndarray) -> tuple[float, int]:
    """(concordant + tied / 2, comparable) by looking at every pair, as Harrell defines them."""
    t, e = frame["time"].to_numpy(), frame["cens"].to_numpy()
    score, comparable = 0.0, 0
    for i in np.flatnonzero(e == 1):
        later = (t > t[i]) | ((t == t[i]) & (e == 0))
        comparable += int(later.sum())
        score += float(np.sum(risk[i] > risk[later]) + np.sum(risk[i] == risk[later]) / 2)
    return score, comparable


def test_cox_mlp_reaches_the_pooled_cox_models_concordance(
    net: Sandbox, trial: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    train, test = trial
    with net.session(dataset="gbsg2", progress=False) as s:
        model = s.train(
            FEATURES,
            model="cox_mlp",
            duration="time",
            event="cens",
            hidden=[8],
            rounds=20,
            local_epochs=5,
            batch_size=64,
            learning_rate=0.05,
        )
    assert model.columns[-2:] == ["C(tgrade)[T.II]", "C(tgrade)[T.III]"]
    assert model.levels["tgrade"] == ("I", "II", "III")

    pooled = CoxPHFitter().fit(train.drop(columns="centre"), "time", "cens", formula=FEATURES)
    c_pooled = concordance_index(test["time"], -pooled.predict_partial_hazard(test), test["cens"])
    c_federated = concordance_index(test["time"], -model.predict_risk(test), test["cens"])
    assert c_federated >= c_pooled - 0.03, (c_federated, c_pooled)
    assert c_federated > 0.6

    # The federated evaluation: summed pair counts of every node's held-out rows.
    score, comparable = 0.0, 0
    for _, rows in held_out(train, "centre").groupby("centre"):
        part = _pairs(rows, model.predict_risk(rows))
        score, comparable = score + part[0], comparable + part[1]
    assert model.history[-1].eval_concordance == pytest.approx(score / comparable, abs=1e-12)
    assert model.history[-1].train_loss < model.history[0].train_loss


def test_a_survival_model_refuses_dp_sgd(net: Sandbox) -> None:
    from oncofed.kernel.errors import OncofedError

    with net.session(dataset="gbsg2", progress=False) as s, pytest.raises(OncofedError) as err:
        s.train(
            "age", model="cox_mlp", duration="time", event="cens", dp={"epsilon": 1, "delta": 1e-5}
        )
    assert "risk set" in str(err.value)
