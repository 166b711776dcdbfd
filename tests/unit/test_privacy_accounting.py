"""Privacy accounting, the ledger and the DP mechanisms, against OpenDP and by hand."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import numpy as np
import opendp.prelude as dp
import pytest
from scipy import stats

from oncofed.kernel.errors import NodeRefusal
from oncofed.privacy.accounting import PrivacyLoss, rho_for
from oncofed.privacy.dp import MAX_ROWS, DPRequest, release_for
from oncofed.privacy.ledger import LEDGER_FILE, PrivacyLedger
from oncofed.privacy.policy import DatasetPrivacy

dp.enable_features("contrib")


@pytest.mark.parametrize("rho", [1e-4, 1e-3, 0.05, 0.5, 2.0])
def test_conversion_to_epsilon_matches_opendp_within_one_percent(rho: float) -> None:
    measurement = dp.m.make_gaussian(
        dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float), scale=1.0
    )
    scaled = np.sqrt(2 * rho)  # the d_in at which a unit-scale Gaussian is rho-zCDP
    assert measurement.map(scaled) == pytest.approx(rho)
    oracle = dp.c.make_zCDP_to_approxDP(measurement).map(scaled).epsilon(1e-6)
    ours = PrivacyLoss.from_rho(rho).epsilon(1e-6)
    assert oracle <= ours <= oracle * 1.01


def test_rho_for_inverts_the_conversion_and_composition_adds_curves() -> None:
    rho = rho_for(1.0, 1e-6)
    assert PrivacyLoss.from_rho(rho).epsilon(1e-6) == pytest.approx(1.0, rel=1e-9)
    three = PrivacyLoss.from_rho(rho) + PrivacyLoss.from_rho(rho) + PrivacyLoss.from_rho(rho)
    np.testing.assert_allclose(three.rdp, PrivacyLoss.from_rho(3 * rho).rdp, rtol=1e-12)
    assert 1.0 < three.epsilon(1e-6) < 3.0  # zCDP composes better than adding epsilons
    with pytest.raises(ValueError, match="RDP_ORDERS"):
        PrivacyLoss.from_rdp([2.0, 3.0], [0.1, 0.2])


def _charge(ledger: PrivacyLedger, message_id: str, loss: PrivacyLoss, reply: bytes) -> bytes:
    return ledger.charge(
        message_id=message_id,
        study="s",
        dataset="d",
        task="describe",
        mechanism="test",
        loss=loss,
        privacy=DatasetPrivacy(epsilon=3.0, delta=1e-6),
        reply=reply,
    )


def test_ledger_never_charges_past_the_cap_under_concurrent_releases(tmp_path: Path) -> None:
    ledger = PrivacyLedger.at(tmp_path, "centre-a")
    loss = DPRequest(epsilon=1.0).loss()
    outcomes: list[str] = []

    def release(i: int) -> None:
        try:
            _charge(ledger, f"m{i}", loss, b"reply")
            outcomes.append("charged")
        except NodeRefusal as exc:
            outcomes.append(exc.rule)

    threads = [threading.Thread(target=release, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    allowed = max(
        k for k in range(13) if PrivacyLoss.from_rho(k * loss.rdp[0] / 1.1).epsilon(1e-6) <= 3.0
    )
    assert outcomes.count("charged") == allowed
    assert set(outcomes) == {"charged", "privacy.budget"}
    reopened = PrivacyLedger.at(tmp_path, "centre-a")  # durable: a new process sees it all
    assert reopened.spent("s", "d").epsilon(1e-6) <= 3.0
    assert len(reopened.charges("s")) == allowed


def test_a_message_charged_once_returns_its_first_reply(tmp_path: Path) -> None:
    ledger = PrivacyLedger.at(tmp_path, "centre-a")
    loss = DPRequest(epsilon=0.5).loss()
    assert _charge(ledger, "m1", loss, b"first") == b"first"
    assert _charge(ledger, "m1", loss, b"second sample") == b"first"
    assert ledger.stored_reply("m1") == b"first"
    assert len(ledger.charges()) == 1


def test_opendp_float_sum_sensitivity_covers_rounding() -> None:
    """A NumPy sum's sensitivity is not hi: float rounding over many rows adds to it."""
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance()
    summed = dp.t.make_clamp(*space, bounds=(0.0, 100.0)) >> dp.t.make_bounded_float_checked_sum(
        size_limit=MAX_ROWS, bounds=(0.0, 100.0)
    )
    assert summed.map(1) > 100.0
    release = release_for(DPRequest(epsilon=1.0))
    release.bounded_sums("sum", [np.array([1.0, 2.0])], (0.0, 100.0), release.budget)
    # The release is calibrated to OpenDP's sensitivity, not to the naive 100.
    assert release.scales["sum"] > 100.0 / np.sqrt(2 * release.budget)


def test_released_floats_show_no_low_bit_pattern() -> None:
    """Mironov (2012): naive float noise leaves gaps in the low bits that identify the input."""
    release = release_for(DPRequest(epsilon=5.0))
    part = release.budget / 2000
    values = np.array(release.bounded_sums("sum", [np.array([50.0])] * 2000, (0.0, 100.0), part))
    low_byte = values.view(np.uint64) & np.uint64(0xFF)
    counts = np.bincount(low_byte.astype(np.int64), minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-4


def test_noisy_counts_are_integers_with_the_stated_scale() -> None:
    release = release_for(DPRequest(epsilon=1.0))
    noisy = release.counts("count", np.full(5000, 100), release.budget)
    assert noisy.dtype == np.int64
    assert np.std(noisy) == pytest.approx(release.scales["count"], rel=0.05)
    assert release.loss().epsilon(1e-6) == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match="would spend"):
        release.counts("more", [1], release.budget)


def test_a_ledger_from_before_researchers_were_recorded_opens_and_keeps_its_charges(
    tmp_path: Path,
) -> None:
    """Version 1 ledgers (no researcher column) are upgraded in place, their charges kept.

    Those charges named no one, so they count for their permit but for no researcher.
    """
    with sqlite3.connect(tmp_path / LEDGER_FILE) as db:
        db.executescript(
            """
            CREATE TABLE charges (message_id VARCHAR(128) PRIMARY KEY, study VARCHAR(128)
                NOT NULL, dataset VARCHAR(128) NOT NULL, task VARCHAR(64) NOT NULL,
                mechanism VARCHAR(128) NOT NULL, rdp TEXT NOT NULL, epsilon FLOAT NOT NULL,
                delta FLOAT NOT NULL, charged_at FLOAT NOT NULL, reply BLOB NOT NULL);
            CREATE TABLE ledger_schema (version INTEGER PRIMARY KEY);
            INSERT INTO ledger_schema VALUES (1);
            """
        )
        old = DPRequest(epsilon=1.0).loss()
        db.execute(
            "INSERT INTO charges VALUES ('old', 's', 'd', 't', 'm', ?, 1.0, 1e-6, 0, x'00')",
            (json.dumps(old.rdp),),
        )
    ledger = PrivacyLedger.at(tmp_path, "centre-a")
    privacy = DatasetPrivacy(epsilon=3.0, delta=1e-6)
    assert ledger.spent("s", "d") == old
    assert ledger.lifetime("ada", "d", privacy).spent == PrivacyLoss.zero()
    ledger.charge(
        message_id="new",
        study="s",
        dataset="d",
        task="t",
        mechanism="m",
        loss=old,
        privacy=privacy,
        reply=b"r",
        researcher="ada",
    )
    assert [c.researcher for c in ledger.charges("s")] == ["", "ada"]
    assert ledger.lifetime("ada", "d", privacy).spent == old
    assert [row.holder for row in ledger.lifetimes({"d": privacy})] == ["ada"]


def test_noisy_float_vectors_are_calibrated_to_the_stated_sensitivity() -> None:
    release = release_for(DPRequest(epsilon=1.0))
    noisy = release.floats("stat", np.zeros((50, 100)), release.budget, sensitivity=3.0)
    assert noisy.shape == (50, 100)
    # zCDP Gaussian: sigma = sensitivity / sqrt(2 rho).
    assert release.scales["stat"] == pytest.approx(3.0 / np.sqrt(2 * release.budget))
    assert np.std(noisy) == pytest.approx(release.scales["stat"], rel=0.05)
    assert release.loss().epsilon(1e-6) == pytest.approx(1.0, rel=1e-6)
