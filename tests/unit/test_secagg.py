"""Secure aggregation protocol: exact sums, dropouts, and a coordinator that cheats."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from scipy import stats

from oncofed.privacy.secagg import (
    SecAggError,
    SecAggNode,
    SecAggServer,
    decode_float,
    encode_float,
    shamir,
)
from oncofed.privacy.secagg.protocol import Advert

U64 = np.uint64


def _nodes(
    n: int,
    threshold: int,
    session: str = "run-1/histogram",
    identities: Mapping[str, Ed25519PrivateKey] | None = None,
) -> list[SecAggNode]:
    names = [f"centre-{i}" for i in range(n)]
    if identities is None:
        identities = {name: Ed25519PrivateKey.generate() for name in names}
    public = {name: key.public_key() for name, key in identities.items()}
    return [SecAggNode(name, identities[name], public, session, threshold) for name in names]


def _run(
    nodes: list[SecAggNode],
    vectors: Mapping[str, np.ndarray],
    drop_after_share: set[str] = frozenset(),  # type: ignore[assignment]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """All four stages as a coordinator relays them; returns the total and what it saw."""
    adverts = {n.name: n.advertise() for n in nodes}
    sealed = {n.name: n.share(adverts) for n in nodes}
    alive = [n for n in nodes if n.name not in drop_after_share]
    masked = {
        n.name: n.mask(
            {s: box[n.name] for s, box in sealed.items() if s != n.name}, vectors[n.name]
        )
        for n in alive
    }
    reveals = {n.name: n.unmask(sorted(masked)) for n in alive}
    server = SecAggServer(nodes[0].session, nodes[0].threshold)
    return server.aggregate(adverts, sorted(sealed), masked, reveals), masked


def test_masked_sum_equals_the_plain_sum_modulo_2_64() -> None:
    rng = np.random.default_rng(1)
    nodes = _nodes(5, 3)
    vectors = {n.name: rng.integers(0, 2**64, 1000, dtype=U64) for n in nodes}
    total, masked = _run(nodes, vectors)
    np.testing.assert_array_equal(total, np.sum(list(vectors.values()), axis=0, dtype=U64))
    for name, vector in vectors.items():
        assert not np.array_equal(masked[name], vector)  # nothing the coordinator holds is plain


def test_fixed_point_floats_sum_within_rounding() -> None:
    rng = np.random.default_rng(2)
    nodes = _nodes(4, 3)
    floats = {n.name: rng.normal(0, 1000, 500) for n in nodes}
    total, _ = _run(nodes, {k: encode_float(v, 4) for k, v in floats.items()})
    np.testing.assert_allclose(
        decode_float(total), np.sum(list(floats.values()), axis=0), atol=4 * 2.0**-24
    )


@pytest.mark.parametrize("dropped", [{"centre-2"}, {"centre-0", "centre-5"}])
def test_nodes_dropping_after_masking_starts_leave_the_survivors_sum(dropped: set[str]) -> None:
    rng = np.random.default_rng(3)
    nodes = _nodes(6, 4)
    vectors = {n.name: rng.integers(0, 1000, 50).astype(U64) for n in nodes}
    total, _ = _run(nodes, vectors, drop_after_share=dropped)
    expected = sum(v for k, v in vectors.items() if k not in dropped)
    np.testing.assert_array_equal(total, expected)


def test_a_minority_threshold_is_refused() -> None:
    nodes = _nodes(4, 2)
    adverts = {n.name: n.advertise() for n in nodes}
    with pytest.raises(SecAggError) as caught:
        nodes[0].share(adverts)
    assert caught.value.rule == "secagg.threshold"


def test_too_many_dropouts_fail() -> None:
    nodes = _nodes(6, 4)
    vectors = {n.name: np.ones(10, dtype=U64) for n in nodes}
    with pytest.raises(SecAggError) as caught:
        _run(nodes, vectors, drop_after_share={"centre-0", "centre-1", "centre-2"})
    assert caught.value.rule == "secagg.too_few"


def test_a_substituted_key_is_refused_naming_the_node() -> None:
    nodes = _nodes(4, 3)
    adverts = {n.name: n.advertise() for n in nodes}
    genuine = Advert.from_bytes(adverts["centre-2"])
    attacker = Ed25519PrivateKey.generate()  # the coordinator's own key pair
    forged_c = nodes[0].advertise()  # any other valid-looking key bytes
    fake = Advert.from_bytes(forged_c)
    payload = Advert.signed_bytes(nodes[0].session, "centre-2", fake.c_public, genuine.s_public)
    adverts["centre-2"] = Advert(
        "centre-2", fake.c_public, genuine.s_public, attacker.sign(payload)
    ).to_bytes()
    with pytest.raises(SecAggError) as caught:
        nodes[1].share(adverts)
    assert caught.value.rule == "secagg.bad_key" and caught.value.context["culprit"] == "centre-2"


def test_an_advert_from_another_session_is_refused() -> None:
    identities = {f"centre-{i}": Ed25519PrivateKey.generate() for i in range(3)}
    old = _nodes(3, 2, session="run-1/a", identities=identities)
    new = _nodes(3, 2, session="run-2/a", identities=identities)
    adverts = {n.name: n.advertise() for n in new}
    adverts["centre-1"] = old[1].advertise()  # replayed from the earlier session
    with pytest.raises(SecAggError) as caught:
        new[0].share(adverts)
    assert caught.value.rule == "secagg.bad_key"


def test_a_node_never_reveals_both_secrets_of_one_node() -> None:
    nodes = _nodes(4, 3)
    adverts = {n.name: n.advertise() for n in nodes}
    sealed = {n.name: n.share(adverts) for n in nodes}
    target = nodes[0]
    target.mask(
        {s: box[target.name] for s, box in sealed.items() if s != target.name},
        np.zeros(4, dtype=U64),
    )
    target.unmask([n.name for n in nodes])
    with pytest.raises(SecAggError) as caught:  # now claim centre-3 dropped: c-key shares
        target.unmask(["centre-0", "centre-1", "centre-2"])
    assert caught.value.rule == "secagg.replay"


def test_shamir_needs_threshold_shares() -> None:
    secret = bytes(range(32))
    shares = shamir.split(secret, 6, 4)
    assert shamir.combine({x: shares[x] for x in (2, 3, 5, 6)}) == secret
    with pytest.raises(ValueError):
        shamir.combine({x: shares[x] for x in (1, 2, 3)})  # three points: some other value


def test_a_masked_vector_looks_uniform() -> None:
    nodes = _nodes(3, 2)
    _, masked = _run(nodes, {n.name: np.zeros(20_000, dtype=U64) for n in nodes})
    top_byte = (masked["centre-0"] >> U64(56)).astype(np.int64)
    assert stats.chisquare(np.bincount(top_byte, minlength=256)).pvalue > 1e-4
