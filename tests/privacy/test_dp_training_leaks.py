"""A DP-SGD training round releases nothing about the rows outside the DP-SGD mechanism.

The red-team run that found it: with a valid DP-only permit, one charged
round (epsilon 0.5) with ``where=`` set to a patient's quasi-identifiers
(filters are free under DP) and ``batch_size=1`` gave, next to the noisy
weights, the exact number of training rows (1: membership; ``age >= 75``
gave the true 36) and the exact mean batch loss, which inverted to her
albumin to four decimals. The weights came multiplied by the row count, the
privacy record's sample rate was ``batch_size / rows``, and the Poisson
sampling was seeded from the request.

Here the reviewer's attack runs against one node built as a real node is
(``build_client_app`` with its audit trail, permit checker, default policy
and privacy ledger), under a DP-only permit. What the tests show:

1. the reply holds the noisy weights and nothing the reviewer inverted: no
   row count, no loss (``attack`` finds nothing to invert, where the old
   reply gave 41.7); every field but the noisy weights is identical whether
   the patient's albumin is 41.7, 30.0 or she is not in the data at all, and
   so is the epsilon charged;
2. the sampling rate and the steps in the privacy record are the request's
   (``batch_size / dp.expected_rows``), and the weights are not scaled by the
   rows;
3. the request's ``seed`` steers neither the sampling nor the noise;
4. rows a DP run cannot use are left out, never refused: a refusal is free
   and, with ``where=`` on one patient, would answer a yes/no question about
   her exactly.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from flwr.app import Array, ArrayRecord, Message

from oncofed.governance.envelope import Authorisation, SignedTask
from oncofed.kernel.flower import (
    attach_authorisation,
    install_process_identity,
    node_context,
    params_content,
    reply_error,
    stamp,
)
from oncofed.kernel.schema import ColumnSpec
from oncofed.node.config import DatasetConfig
from oncofed.privacy.accounting import PRIVACY_RECORD
from oncofed.privacy.policy import NodePolicy
from oncofed.privacy.release import META, RELEASE_RECORD
from oncofed.tasks.training.params import TrainParams
from oncofed.tasks.training.records import ARRAYS
from tests.node_harness import real_node

pytest.importorskip("torch")
pytest.importorskip("opacus")

DATASET, PERMIT, NODE = "d", "p1", "n1"
TARGET = {"age": 87, "sex": 2, "stage": "IV", "year": 2019, "albumin": 41.7, "status": 1}
"""The patient the reviewer knows by her quasi-identifiers; the secret is her albumin."""
QI = "age == 87 and sex == 2 and stage == 'IV' and year == 2019"
EXPECTED_ROWS = 50
W0, B0 = 0.1, 0.0
"""The coordinator's weights: logit = 0.1 * albumin, so the loss gives albumin back."""
SCHEMA = {
    "age": ColumnSpec(type="integer", bounds=(18.0, 100.0)),
    "sex": ColumnSpec(type="integer", categories=("1", "2")),
    "stage": ColumnSpec(type="category", categories=("I", "II", "III", "IV")),
    "year": ColumnSpec(type="integer"),
    "albumin": ColumnSpec(type="float", bounds=(10.0, 60.0)),
    "status": ColumnSpec(type="integer", bounds=(0.0, 1.0)),
}


def patients(target: dict[str, Any] | None) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    n = 400
    frame = pd.DataFrame(
        {
            "age": rng.integers(30, 80, n),  # nobody else is 87
            "sex": rng.integers(1, 3, n),
            "stage": rng.choice(["I", "II", "III", "IV"], n),
            "year": rng.integers(2010, 2024, n),
            "albumin": np.round(rng.normal(38, 5, n), 1),
            "status": rng.integers(0, 2, n),
        }
    )
    if target is None:
        return frame
    return pd.concat([frame, pd.DataFrame([target])], ignore_index=True)


class Centre:
    """One default node (DP only) and the researcher who holds a DP-only permit there."""

    def __init__(self, work: Path, frame: pd.DataFrame) -> None:
        install_process_identity()
        work.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(work / "d.parquet")
        datasets = {DATASET: DatasetConfig(path=work / "d.parquet", columns=SCHEMA)}
        node = real_node(
            work,
            NODE,
            datasets,
            NodePolicy(),
            permit_id=PERMIT,
            task_types=("train",),
            models_may_leave=True,
        )
        self.body, self.ada, self.permit = node.body, node.researcher, node.permit
        self.revocations, self.ledger, self.app = node.revocations, node.ledger, node.app
        self._runs = itertools.count(100)

    def train(self, inputs: int = 1, **fields: Any) -> Message:
        """The reviewer's round: signed by the researcher, relayed with the chosen weights.

        ``inputs`` is the number of encoded columns (albumin's weight first, others 0).
        """
        params = TrainParams.model_validate(
            {
                "dataset": DATASET,
                "study": PERMIT,
                "model": "logistic",
                "features": "albumin",
                "label": "status",
                "scaling": "bounds",
                "rounds": 1,
                "batch_size": 1,
                "test_fraction": 0.0,
                "where": QI,
                "dp": {"epsilon": 0.5, "delta": 1e-6, "expected_rows": EXPECTED_ROWS},
                **fields,
            }
        )
        run = next(self._runs)
        signed = SignedTask.create(self.ada, "train", params.model_dump_json(), PERMIT)
        authorisation = Authorisation(
            task=signed, permit=self.permit, revocations=self.revocations
        ).model_dump_json()
        # No standardisation: the node trains on raw albumin, as in the red-team run.
        content = params_content(params.model_dump_json(), participants=3)
        content[ARRAYS] = ArrayRecord(
            {
                "0.weight": Array(np.array([[W0] + [0.0] * (inputs - 1)])),
                "0.bias": Array(np.array([B0])),
            }
        )
        message = Message(content, 7, "train")
        stamp(message, run_id=run, message_id=f"{run}-0")
        attach_authorisation(message, authorisation)
        reply: Message = self.app(message, node_context(7, run, {}))
        return reply

    def spent(self) -> float:
        return self.ledger.spent(PERMIT, DATASET).epsilon(1e-6)


def released(reply: Message) -> dict[str, Any]:
    """Every field of a reply: its numbers by key, its text and its privacy record."""
    assert not reply.has_error(), reply_error(reply)
    numbers = {k: v.numpy() for k, v in reply.content.array_records[RELEASE_RECORD].items()}
    return {
        "numbers": numbers,
        "meta": dict(reply.content.config_records[META]),
        "privacy": dict(reply.content.config_records[PRIVACY_RECORD]),
    }


def not_noisy(reply: Message) -> dict[str, Any]:
    """What the reply holds besides the DP-SGD weights: it must not depend on the data."""
    fields = released(reply)
    numbers = {k: v.tolist() for k, v in fields["numbers"].items() if not k.startswith("weights.")}
    return {**fields, "numbers": numbers}


def attack(reply: Message) -> float | None:
    """The reviewer's inversion: albumin from the released loss and rows, if it can be done.

    With one row of status 1 at logit 0.1 * albumin, the mean batch loss is
    log(1 + exp(-0.1 * albumin)); the old reply sent it times the rows.
    """
    numbers = released(reply)["numbers"]
    if "loss" not in numbers or "rows" not in numbers:
        return None
    rows, loss = float(numbers["rows"]), float(numbers["loss"])
    z = -math.log(math.expm1(loss / rows))
    return (z - B0) / W0


@pytest.fixture(scope="module")
def centres(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Centre]:
    """The same node with her true albumin, another albumin, and without her."""
    frames = {
        "41.7": patients(TARGET),
        "30.0": patients({**TARGET, "albumin": 30.0}),
        "absent": patients(None),
    }
    return {
        name: Centre(tmp_path_factory.mktemp(f"centre-{name}"), frame)
        for name, frame in frames.items()
    }


def test_the_reviewers_attack_recovers_nothing(centres: dict[str, Centre]) -> None:
    replies = {name: centre.train() for name, centre in centres.items()}
    # The old reply: rows 1 and loss 0.015334, which gave albumin 41.7000 exactly.
    assert attack(replies["41.7"]) is None
    for reply in replies.values():
        fields = released(reply)
        assert fields["meta"]["release"] == "NoisyModelUpdate"
        assert sorted(fields["numbers"]) == ["nodes", "weights.0.bias", "weights.0.weight"]
        assert fields["numbers"]["nodes"].tolist() == [1.0]  # public: FedAvg weighs nodes equally
    # One patient's albumin, or her presence, changes nothing but the noisy weights.
    reference = not_noisy(replies["41.7"])
    assert not_noisy(replies["30.0"]) == reference
    assert not_noisy(replies["absent"]) == reference
    charged = {name: centre.spent() for name, centre in centres.items()}
    assert charged["30.0"] == charged["41.7"] == charged["absent"] > 0


def test_the_accounting_is_the_requests_and_the_weights_are_not_scaled_by_rows(
    centres: dict[str, Centre],
) -> None:
    centre = centres["41.7"]
    # 36 patients aged 75 or more at this node (the old reply said so, and sent weights * 36).
    reply = centre.train(where="age >= 75", learning_rate=1e-6)
    privacy = released(reply)["privacy"]
    assert privacy["sample_rate"] == pytest.approx(1 / EXPECTED_ROWS)
    assert privacy["steps"] == EXPECTED_ROWS  # one expected pass over expected_rows
    assert not_noisy(reply) == not_noisy(centres["absent"].train(where="age >= 75"))
    weights = released(reply)["numbers"]
    # A learning rate of 1e-6 leaves the sent weights where they were, noise and all.
    np.testing.assert_allclose(weights["weights.0.weight"], [[W0]], atol=1e-3)
    np.testing.assert_allclose(weights["weights.0.bias"], [B0], atol=1e-3)


def test_the_requests_seed_steers_neither_sampling_nor_noise(
    centres: dict[str, Centre], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    seeds: list[int] = []

    class Recording(torch.Generator):
        """torch's generator, noting every seed a node gives one."""

        def manual_seed(self, seed: int) -> torch.Generator:
            seeds.append(seed)
            return super().manual_seed(seed)

    monkeypatch.setattr(torch, "Generator", Recording)
    signed_seed = 987_654_321
    centre = centres["41.7"]
    first, second = (released(centre.train(seed=signed_seed))["numbers"] for _ in range(2))
    # The old node seeded its Poisson sampler with the request's seed.
    assert seeds and signed_seed not in seeds
    # The same signed seed, the same data: with the noise seeded from the request the
    # two rounds would give the same weights, and the difference between two requests
    # would be the data's alone.
    assert not np.array_equal(first["weights.0.weight"], second["weights.0.weight"])


@pytest.mark.parametrize(
    ("oracle", "inputs"),
    [
        # Refused as "values other than 0 and 1" iff she passes the filter: sex is 1 or 2.
        ({"label": "sex", "where": f"{QI} and albumin > 40"}, 1),
        # Refused as "values outside the agreed levels" iff her stage is IV.
        ({"features": "albumin + C(stage, levels=['I', 'II', 'III'])", "where": "age == 87"}, 3),
    ],
    ids=["label", "levels"],
)
def test_no_refusal_depends_on_a_patients_values(
    centres: dict[str, Centre], oracle: dict[str, Any], inputs: int
) -> None:
    answers = {name: not_noisy(centre.train(inputs, **oracle)) for name, centre in centres.items()}
    assert answers["30.0"] == answers["41.7"] == answers["absent"]


def test_the_privacy_record_names_public_values_only() -> None:
    """Sample rate and steps follow from the request alone (no row count at all)."""
    params = TrainParams.model_validate(
        {
            "dataset": DATASET,
            "features": "albumin",
            "label": "status",
            "batch_size": 32,
            "local_epochs": 2,
            "dp": {"epsilon": 1.0, "expected_rows": 100},
        }
    )
    assert params.dp is not None
    assert params.dp.sample_rate(32) == 0.32
    assert params.dp.steps_per_round(32, 2) == 2 * 4
    assert params.dp.expected_batch(32) == 32
    with pytest.raises(ValueError, match="expected_rows"):
        TrainParams.model_validate(
            {
                "dataset": DATASET,
                "features": "albumin",
                "label": "status",
                "dp": json.loads('{"epsilon": 1.0}'),
            }
        )
