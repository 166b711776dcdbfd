"""docs/privacy.md runs as written against four lung cancer centres: its refusals, a
researcher spending a permit's budget, and what the node's operator then sees."""

from __future__ import annotations

import tomllib
from pathlib import Path

from oncofed.client.sandbox import Sandbox
from oncofed.privacy.policy import NodePolicy
from tests.docs.conftest import ROOT, run_guide
from tests.docs.markdown import blocks

GUIDE = "docs/privacy.md"


def test_privacy_guide(tmp_path: Path, lung_four_centres: Sandbox) -> None:
    net = lung_four_centres
    net.grant("lung-dp-2026", release="dp")
    net.grant("lung-exact-2026", release="exact", any_filter=True)
    # eve spends a budget of her own: other guides' researcher (ada) shares these nodes
    net.enrol("eve", "researcher")
    net.grant("averaging", persons=["eve"], epsilon=2.0)
    guide = run_guide(
        GUIDE,
        tmp_path,
        values={
            "coord.example.org:7100": net.address,
            "~/.oncofed/eve": str(net.credentials("eve")),
            "node.toml": str(net.node_config("centre-A")),
        },
        # the researcher's shell of the researchers' guide
        env={
            "ONCOFED_COORDINATOR": net.address,
            "ONCOFED_CREDENTIALS": str(net.credentials(net.researcher)),
        },
    )
    assert guide.ran >= 4
    # The benchmark runs ten 20,000-patient networks (tens of minutes): bench/ runs it.
    assert [block.text for block in guide.not_run] == [
        "$ for seed in $(seq 13 22); do python bench/bench_dp_utility.py --rows 20000 "
        "--nodes 5 --epsilon 1 --seed $seed; done"
    ]


def test_the_policy_examples_are_valid_policies() -> None:
    examples = [b.text for b in blocks(ROOT / GUIDE) if b.lang == "toml" and "[policy]" in b.text]
    assert examples
    for text in examples:
        policy = NodePolicy.model_validate(tomllib.loads(text)["policy"])
        assert policy.privacy_for("lung").epsilon == 2.0
