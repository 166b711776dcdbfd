"""A researcher's first hour under the default policy, where every answer is DP (issue 16).

On ``default_net`` (nodes as a centre gets them: DP only, at most epsilon 1 per
release at delta 1e-5): a refusal for a release larger than that cap says what
fits, computed with the accountant the node charges by, and the fix works;
DP training states that its ``dp`` is the whole run's; a DP ``describe`` shows
the (noisy) rows outside the requested categories instead of empty groups alone.
"""

from __future__ import annotations

import pandas as pd
import pytest

from oncofed.client.cli_query import cli_syntax
from oncofed.client.sandbox import Sandbox
from oncofed.kernel.errors import NodeRefusal, OncofedError
from oncofed.privacy.policy import DatasetPrivacy
from oncofed.tasks.training.params import TrainParams

pytestmark = pytest.mark.slow

CAP = DatasetPrivacy()  # the default policy's: max_epsilon_per_release 1 at delta 1e-5


def test_a_dp_training_run_too_costly_per_round_is_told_what_fits(default_net: Sandbox) -> None:
    pytest.importorskip("opacus")
    run = {
        "features": ["age", "wt.loss"],
        "label": "status",
        "rounds": 8,
        "scaling": "bounds",
        "dp": {"epsilon": 3.0, "delta": 1e-5, "expected_rows": 50},
    }
    with default_net.session(dataset="lung", progress=False, permit="first-hour-train") as s:
        with pytest.raises(NodeRefusal) as caught:
            s.train(**run)  # type: ignore[arg-type]
        refusal = caught.value
        assert refusal.rule == "privacy.max_epsilon_per_release"
        assert refusal.node == ", ".join(default_net.node_names)  # one line for every node
        assert "each of this run's 8 rounds costs 1." in refusal.detail
        assert "dp epsilon 3 is the whole run's, spread over its rounds" in refusal.detail
        suggested = {p.name: p.value for p in refusal.params()}
        rounds, total = suggested["rounds"], suggested["dp"]
        assert (
            f"spread the same dp over rounds={rounds}, or keep 8 rounds with dp={{" in refusal.fix
        )
        assert f"--rounds {rounds}" in refusal.one_line(cli_syntax)
        assert total == {"epsilon": total["epsilon"], "delta": 1e-5, "expected_rows": 50}

        # Each fix fits by the node's own accounting, and is no more than it needs to be.
        def round_cost(rounds: int, epsilon: float) -> float:
            params = TrainParams.model_validate(
                {
                    **run,
                    "rounds": rounds,
                    "dp": {**run["dp"], "epsilon": epsilon},
                    "dataset": "lung",
                }
            )
            loss = params.release_loss()
            assert loss is not None
            return loss.epsilon(CAP.delta)

        assert round_cost(rounds, 3.0) <= CAP.max_epsilon_per_release < round_cost(rounds - 1, 3.0)
        assert round_cost(8, total["epsilon"]) <= CAP.max_epsilon_per_release
        assert round_cost(8, total["epsilon"] * 1.02) > CAP.max_epsilon_per_release

        # Asked as suggested, the cap no longer refuses: the run gets as far as its scaling
        # (this schema declares no bounds to scale by).
        with pytest.raises(OncofedError) as next_step:
            s.train(**{**run, "dp": total})  # type: ignore[arg-type]
    assert next_step.value.rule == "training.bounds"


def test_a_dp_describe_above_the_cap_is_told_the_epsilon_that_fits(default_net: Sandbox) -> None:
    with default_net.session(dataset="lung", progress=False, permit="first-hour-describe") as s:
        with pytest.raises(NodeRefusal) as caught:
            s.describe(["age"], dp={"epsilon": 3.0}, bounds={"age": (18, 100)})
        # Asked at the request's delta (1e-6); the node compares at its own (1e-5).
        assert "one release may cost at most epsilon 1 at this node; this one would cost 2." in (
            caught.value.detail
        )
        (dp,) = caught.value.params()
        assert caught.value.fix.startswith(f"ask for dp={{'epsilon': {dp.value['epsilon']}}}, or ")
        assert caught.value.one_line(cli_syntax).endswith(
            f"Fix: ask for --dp epsilon={dp.value['epsilon']}, or ask the node's operator to "
            "raise max_epsilon_per_release"
        )
        result = s.describe(["age"], dp=dp.value, bounds={"age": (18, 100)})
    # Not refused: stated at the request's delta, it is the epsilon suggested.
    assert result.privacy is not None
    assert result.privacy.epsilon == pytest.approx(
        dict.fromkeys(default_net.node_names, dp.value["epsilon"])
    )


def test_a_dp_describe_shows_the_rows_outside_the_categories(
    default_net: Sandbox, lung_with_target: pd.DataFrame
) -> None:
    with default_net.session(dataset="lung", progress=False, permit="first-hour-groups") as s:
        result = s.describe(
            ["age"], by="sex", categories=["0", "3"], dp={"epsilon": 1.0}, bounds={"age": (18, 100)}
        )
    assert result.privacy is not None
    sd = result.privacy.noise_std["count.age"]  # the outside count is a cell of that vector
    assert abs(result.rows_outside_categories - len(lung_with_target)) <= 6 * sd  # type: ignore[operator]
    assert all(abs(row.count) <= 6 * sd for row in result.rows)  # nobody is coded 0 or 3
    assert abs(result.rows_group_missing) <= 6 * sd  # type: ignore[arg-type]
    assert result.privacy.epsilon == pytest.approx(dict.fromkeys(default_net.node_names, 1.0))
