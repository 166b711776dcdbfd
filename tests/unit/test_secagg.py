"""Secure aggregation: exact sums, dropouts, and a coordinator that cheats.

Every test drives the library the way a transport would: only bytes, dicts
of bytes and uint64 arrays pass between the nodes and the server.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from scipy import stats

from oncofed.kernel.errors import NodeRefusal
from oncofed.privacy.secagg import (
    Advert,
    SecAggError,
    SecAggNode,
    SecAggServer,
    decode,
    decode_int,
    encode,
    encode_int,
    expand,
    shamir,
)
from oncofed.privacy.secagg.channel import public_bytes

U64 = np.uint64
SESSION = "task-7f3a/round-1"


def _names(n: int) -> list[str]:
    return [f"centre-{i}" for i in range(n)]


def _identities(names: Sequence[str]) -> dict[str, Ed25519PrivateKey]:
    return {name: Ed25519PrivateKey.generate() for name in names}


def _nodes(
    n: int,
    threshold: int,
    session: str = SESSION,
    identities: Mapping[str, Ed25519PrivateKey] | None = None,
    bound: bool = True,
) -> list[SecAggNode]:
    names = _names(n)
    keys = identities or _identities(names)
    pinned = {name: key.public_key() for name, key in keys.items()}
    roster = names if bound else None
    return [SecAggNode(name, keys[name], pinned, session, threshold, roster) for name in names]


@dataclass
class Run:
    total: np.ndarray
    server: SecAggServer
    masked: dict[str, np.ndarray]
    sent: dict[str, list[bytes | np.ndarray]] = field(default_factory=dict)


def _run(
    nodes: list[SecAggNode],
    vectors: Mapping[str, np.ndarray],
    drop_before_mask: Collection[str] = (),
    drop_before_unmask: Collection[str] = (),
) -> Run:
    """All four stages, relayed through a SecAggServer as a transport would."""
    length = len(next(iter(vectors.values())))
    server = SecAggServer([n.name for n in nodes], nodes[0].threshold, length)
    sent: dict[str, list[bytes | np.ndarray]] = {n.name: [] for n in nodes}
    for node in nodes:
        advert = node.advertise()
        sent[node.name].append(advert)
        server.receive_advert(node.name, advert)
    relayed = server.adverts()
    for node in nodes:
        sealed = node.share(relayed)
        sent[node.name].extend(sealed.values())
        server.receive_shares(node.name, sealed)
    masked = {}
    for node in nodes:
        if node.name in drop_before_mask:
            continue
        masked[node.name] = node.mask(server.inbox(node.name), vectors[node.name])
        sent[node.name].append(masked[node.name])
        server.receive_masked(node.name, masked[node.name])
    survivors, dropped = server.unmask_request()
    for node in nodes:
        if node.name in survivors and node.name not in drop_before_unmask:
            reveal = node.unmask(survivors, dropped)
            sent[node.name].append(reveal)
            server.receive_unmask(node.name, reveal)
    return Run(server.result(), server, masked, sent)


def _sum(vectors: Mapping[str, np.ndarray], names: Collection[str]) -> np.ndarray:
    return np.sum([vectors[name] for name in names], axis=0, dtype=U64)


# Exact sums ------------------------------------------------------------------------------


def test_masked_sum_of_five_nodes_equals_numpy_sum_modulo_2_64() -> None:
    rng = np.random.default_rng(1)
    nodes = _nodes(5, 3)
    vectors = {n.name: rng.integers(0, 2**64, 10_000, dtype=U64) for n in nodes}
    run = _run(nodes, vectors)
    np.testing.assert_array_equal(run.total, _sum(vectors, vectors))
    assert run.total.dtype == U64
    for name, vector in vectors.items():
        assert not np.array_equal(run.masked[name], vector)


def test_unbound_roster_as_the_runtime_uses_it_also_sums_exactly() -> None:
    """Without a fixed roster the nodes count the relayed adverts themselves."""
    rng = np.random.default_rng(11)
    nodes = _nodes(4, 3, bound=False)
    vectors = {n.name: rng.integers(0, 2**64, 100, dtype=U64) for n in nodes}
    run = _run(nodes, vectors, drop_before_mask={"centre-3"})
    np.testing.assert_array_equal(run.total, _sum(vectors, ["centre-0", "centre-1", "centre-2"]))


def test_fixed_point_floats_sum_within_rounding() -> None:
    rng = np.random.default_rng(2)
    n, frac_bits = 5, 20
    nodes = _nodes(n, 3)
    floats = {node.name: rng.normal(0, 1000, 2_000) for node in nodes}
    run = _run(nodes, {k: encode(v, frac_bits, nodes=n) for k, v in floats.items()})
    got = decode(run.total, frac_bits)
    want = np.sum(list(floats.values()), axis=0)
    assert np.max(np.abs(got - want)) <= n * 2.0**-frac_bits
    assert np.max(np.abs(got - want)) > 0  # rounding is real: the bound is what is tested


def test_integer_counts_pass_exactly_including_negatives() -> None:
    counts = {f"centre-{i}": np.array([i, -3 * i, 2**40 + i], dtype=np.int64) for i in range(4)}
    nodes = _nodes(4, 3)
    run = _run(nodes, {k: encode_int(v, nodes=4) for k, v in counts.items()})
    np.testing.assert_array_equal(decode_int(run.total), np.sum(list(counts.values()), axis=0))
    np.testing.assert_array_equal(encode(np.array([7, -2]), 0), encode_int([7, -2]))


def test_encoding_refuses_values_that_could_overflow_the_sum() -> None:
    limit = 2.0**63 / 2**16 / 10  # 10 nodes, 16 fractional bits
    encode(np.array([0.99 * limit, -0.99 * limit]), 16, nodes=10)
    with pytest.raises(SecAggError) as caught:
        encode(np.array([1.0, 1.01 * limit]), 16, nodes=10)
    assert caught.value.rule == "secagg.overflow"
    assert "10 nodes" in str(caught.value)
    with pytest.raises(SecAggError):
        encode(np.array([np.nan]), 16)
    with pytest.raises(SecAggError):
        encode_int(np.array([2**62]), nodes=2)


# Dropouts --------------------------------------------------------------------------------


@pytest.mark.parametrize("dropped", [{"centre-2"}, {"centre-0", "centre-5"}])
def test_nodes_dropping_after_sharing_leave_the_exact_sum_of_survivors(
    dropped: set[str],
) -> None:
    rng = np.random.default_rng(3)
    nodes = _nodes(6, 4)
    vectors = {n.name: rng.integers(0, 2**64, 500, dtype=U64) for n in nodes}
    run = _run(nodes, vectors, drop_before_mask=dropped)
    survivors = [n.name for n in nodes if n.name not in dropped]
    np.testing.assert_array_equal(run.total, _sum(vectors, survivors))
    assert not np.array_equal(run.total, _sum(vectors, vectors))


def test_a_survivor_silent_in_the_unmasking_stage_is_not_needed() -> None:
    """Its vector arrived, so it counts; threshold shares of everything still arrive."""
    rng = np.random.default_rng(4)
    nodes = _nodes(6, 4)
    vectors = {n.name: rng.integers(0, 2**64, 50, dtype=U64) for n in nodes}
    run = _run(nodes, vectors, drop_before_mask={"centre-1"}, drop_before_unmask={"centre-4"})
    survivors = [n.name for n in nodes if n.name != "centre-1"]
    np.testing.assert_array_equal(run.total, _sum(vectors, survivors))


def test_too_many_dropouts_are_refused_by_server_and_nodes() -> None:
    nodes = _nodes(6, 4)
    vectors = {n.name: np.ones(10, dtype=U64) for n in nodes}
    with pytest.raises(SecAggError) as caught:
        _run(nodes, vectors, drop_before_mask={"centre-0", "centre-1", "centre-2"})
    assert caught.value.rule == "secagg.too_few"
    # A node asked directly (by a server that skips its own check) refuses as well.
    node = nodes[3]
    with pytest.raises(SecAggError) as refused:
        node.unmask(["centre-3", "centre-4", "centre-5"], ["centre-0", "centre-1", "centre-2"])
    assert refused.value.rule == "secagg.too_few" and refused.value.node == "centre-3"


def test_too_few_unmasking_replies_are_refused() -> None:
    nodes = _nodes(6, 4)
    vectors = {n.name: np.ones(10, dtype=U64) for n in nodes}
    with pytest.raises(SecAggError) as caught:
        _run(
            nodes,
            vectors,
            drop_before_mask={"centre-0"},
            drop_before_unmask={"centre-1", "centre-2"},
        )
    assert caught.value.rule == "secagg.too_few"


def test_a_minority_threshold_is_refused() -> None:
    with pytest.raises(SecAggError) as caught:
        _nodes(4, 2)
    assert caught.value.rule == "secagg.threshold"
    with pytest.raises(SecAggError):
        SecAggServer(_names(4), 2, 10)


# A cheating coordinator ------------------------------------------------------------------


def _adverts(nodes: list[SecAggNode]) -> dict[str, bytes]:
    return {n.name: n.advertise() for n in nodes}


def test_a_key_re_signed_by_the_coordinator_is_refused_naming_the_node() -> None:
    nodes = _nodes(4, 3)
    adverts = _adverts(nodes)
    genuine = Advert.from_bytes(adverts["centre-2"])
    coordinator = Ed25519PrivateKey.generate()  # the coordinator's own identity key
    own_c = public_bytes(X25519PrivateKey.generate())  # a key pair whose secret it knows
    forged = Advert.make(coordinator, SESSION, genuine.roster, "centre-2", own_c, genuine.s_public)
    adverts["centre-2"] = forged.to_bytes()
    with pytest.raises(SecAggError) as caught:
        nodes[1].share(adverts)
    error = caught.value
    assert error.rule == "secagg.bad_key"
    assert error.context["culprit"] == "centre-2" and "centre-2" in str(error)
    assert error.node == "centre-1"  # the node that refused
    assert isinstance(error, NodeRefusal)


def test_an_unsigned_key_is_refused_naming_the_node() -> None:
    nodes = _nodes(4, 3)
    adverts = _adverts(nodes)
    genuine = Advert.from_bytes(adverts["centre-3"])
    own_c = public_bytes(X25519PrivateKey.generate())
    unsigned = Advert("centre-3", SESSION, genuine.roster, own_c, genuine.s_public, b"")
    adverts["centre-3"] = unsigned.to_bytes()
    with pytest.raises(SecAggError) as caught:
        nodes[0].share(adverts)
    assert caught.value.rule == "secagg.bad_key"
    assert caught.value.context["culprit"] == "centre-3"


def test_an_advert_relayed_under_another_name_is_refused() -> None:
    nodes = _nodes(4, 3)
    adverts = _adverts(nodes)
    adverts["centre-2"] = adverts["centre-3"]
    with pytest.raises(SecAggError) as caught:
        nodes[0].share(adverts)
    assert caught.value.context["culprit"] == "centre-2"


def test_an_advert_replayed_from_another_session_is_refused() -> None:
    identities = _identities(_names(3))
    old = _nodes(3, 2, session="task-7f3a/round-0", identities=identities)
    new = _nodes(3, 2, session="task-7f3a/round-1", identities=identities)
    adverts = _adverts(new)
    adverts["centre-1"] = old[1].advertise()  # genuinely signed, for the earlier round
    with pytest.raises(SecAggError) as caught:
        new[0].share(adverts)
    assert caught.value.rule == "secagg.replay"
    assert caught.value.context["culprit"] == "centre-1"
    server = SecAggServer(_names(3), 2, 4, session="task-7f3a/round-1")
    with pytest.raises(SecAggError):
        server.receive_advert("centre-1", old[1].advertise())


def test_an_advert_signed_for_another_roster_is_refused() -> None:
    identities = _identities(_names(4))
    pinned = {name: key.public_key() for name, key in identities.items()}
    nodes = _nodes(4, 3, identities=identities)
    smaller = SecAggNode("centre-1", identities["centre-1"], pinned, SESSION, 2, _names(3))
    adverts = _adverts(nodes)
    adverts["centre-1"] = smaller.advertise()
    with pytest.raises(SecAggError) as caught:
        nodes[0].share(adverts)
    assert caught.value.rule == "secagg.replay"


def test_sealed_shares_from_another_session_do_not_open() -> None:
    identities = _identities(_names(3))
    first = _nodes(3, 2, session="s-1", identities=identities)
    second = _nodes(3, 2, session="s-2", identities=identities)
    sealed_first = {n.name: n.share(_adverts(first)) for n in first}
    for n in second:
        n.share(_adverts(second))
    with pytest.raises(SecAggError) as caught:
        second[0].mask({"centre-1": sealed_first["centre-1"]["centre-0"]}, np.zeros(3, U64))
    assert caught.value.rule == "secagg.bad_share"


def test_a_tampered_share_is_refused() -> None:
    nodes = _nodes(3, 2)
    adverts = _adverts(nodes)
    sealed = {n.name: n.share(adverts) for n in nodes}
    box = bytearray(sealed["centre-2"]["centre-0"])
    box[20] ^= 1
    with pytest.raises(SecAggError) as caught:
        nodes[0].mask({"centre-2": bytes(box)}, np.zeros(3, U64))
    assert caught.value.context["culprit"] == "centre-2"


def test_a_node_never_reveals_both_secrets_of_one_node() -> None:
    nodes = _nodes(4, 3)
    adverts = _adverts(nodes)
    sealed = {n.name: n.share(adverts) for n in nodes}
    target = nodes[0]
    target.mask(
        {s: box["centre-0"] for s, box in sealed.items() if s != "centre-0"}, np.zeros(4, U64)
    )
    everyone = _names(4)
    target.unmask(everyone, [])
    target.unmask(everyone, [])  # a retransmitted request reveals nothing new
    with pytest.raises(SecAggError) as caught:  # now claim centre-3 dropped: its c share
        target.unmask(["centre-0", "centre-1", "centre-2"], ["centre-3"])
    assert caught.value.rule == "secagg.both_secrets"
    assert caught.value.context["culprit"] == "centre-3"
    with pytest.raises(SecAggError):  # one node both survivor and dropped in one request
        nodes[1].unmask(everyone, ["centre-3"])


# Shamir ---------------------------------------------------------------------------------


def test_shamir_reconstructs_from_any_t_shares_and_not_from_t_minus_1() -> None:
    secret = bytes(range(32))
    n, t = 6, 4
    shares = shamir.split(secret, n, t)
    for subset in itertools.combinations(range(1, n + 1), t):
        assert shamir.combine({x: shares[x] for x in subset}) == secret
    for subset in itertools.combinations(range(1, n + 1), t - 1):
        value = shamir.interpolate({x: shares[x] for x in subset})
        assert value != int.from_bytes(secret, "big")
        with pytest.raises(ValueError):
            shamir.combine({x: shares[x] for x in subset}, t)


def test_shamir_edge_secrets_and_a_corrupted_share() -> None:
    for secret in (bytes(32), b"\xff" * 32):
        shares = shamir.split(secret, 5, 3)
        assert shamir.combine(shares, 3) == secret
    shares = shamir.split(b"\x01" * 32, 5, 3)
    shares[5] = (int.from_bytes(shares[5], "big") ^ 1).to_bytes(shamir.SHARE_BYTES, "big")
    with pytest.raises(ValueError, match="same polynomial"):
        shamir.combine(shares, 3)


# What the coordinator sees ----------------------------------------------------------------


def test_a_masked_vector_looks_uniform() -> None:
    zeros = {name: np.zeros(50_000, dtype=U64) for name in _names(3)}
    first = _run(_nodes(3, 2), zeros).masked["centre-0"]
    second = _run(_nodes(3, 2), zeros).masked["centre-0"]
    assert np.count_nonzero(first) > 49_990
    assert np.count_nonzero(first == second) < 10
    top_byte = (first >> U64(56)).astype(np.int64)
    assert stats.chisquare(np.bincount(top_byte, minlength=256)).pvalue > 1e-4
    # The check can fail: an unmasked-looking vector (small counts) is far from uniform.
    small = np.arange(50_000, dtype=U64) << U64(40)
    skewed = (small >> U64(56)).astype(np.int64)
    assert stats.chisquare(np.bincount(skewed, minlength=256)).pvalue < 1e-4


def _stored(value: object, seen: set[int] | None = None) -> list[np.ndarray]:
    """Every array and byte string reachable from the server's attributes."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return []
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, bytes | bytearray):
        return [np.frombuffer(bytes(value[: len(value) // 8 * 8]), dtype=U64)]
    if isinstance(value, Mapping):
        return [a for k, v in value.items() for a in _stored(k, seen) + _stored(v, seen)]
    if isinstance(value, list | tuple | set | frozenset):
        return [a for v in value for a in _stored(v, seen)]
    if hasattr(value, "__dict__"):
        return _stored(vars(value), seen)
    return []


def test_the_server_never_holds_an_unmasked_individual_vector() -> None:
    rng = np.random.default_rng(9)
    nodes = _nodes(5, 3)
    vectors = {n.name: rng.integers(0, 2**64, 64, dtype=U64) for n in nodes}
    run = _run(nodes, vectors, drop_before_mask={"centre-4"})
    stored = _stored(run.server)
    assert stored  # the walk does reach the server's arrays
    for array in stored:
        for vector in vectors.values():
            assert not np.array_equal(array[: len(vector)], vector)
            assert np.count_nonzero(np.isin(array, vector)) == 0
    # The walk would find a plain vector had the server kept one.
    run.server.__dict__["_leak"] = vectors["centre-0"].copy()
    assert any(np.array_equal(a, vectors["centre-0"]) for a in _stored(run.server))


def test_one_node_alone_cannot_be_unmasked_from_its_vector_and_b() -> None:
    """With b known but the pairwise keys secret, a single vector is still masked."""
    nodes = _nodes(3, 2)
    vectors = {name: np.full(8, 5, dtype=U64) for name in _names(3)}
    run = _run(nodes, vectors)
    b = nodes[0]._b  # only the node itself knows this
    stripped = run.masked["centre-0"] - expand(b, 8)
    assert not np.array_equal(stripped, vectors["centre-0"])


# The runtime's form: the coordinator learns the roster from the adverts ------------------


def test_a_server_that_learns_the_roster_from_the_adverts_matches() -> None:
    rng = np.random.default_rng(12)
    nodes = _nodes(5, 3, bound=False)
    vectors = {n.name: rng.integers(0, 2**64, 30, dtype=U64) for n in nodes}
    server = SecAggServer(None, 3, session=SESSION)
    for name, raw in _adverts(nodes).items():
        server.receive_advert(name, raw)
    relayed = server.adverts()
    assert server.participants == tuple(sorted(vectors))
    for n in nodes:
        server.receive_shares(n.name, n.share(relayed))
    alive = [n for n in nodes if n.name != "centre-1"]
    masked = {n.name: n.mask(server.inbox(n.name), vectors[n.name]) for n in alive}
    for name, vector in masked.items():
        server.receive_masked(name, vector)
    survivors, dropped = server.unmask_request()
    assert dropped == ["centre-1"]
    for n in alive:
        server.receive_unmask(n.name, n.unmask(survivors))
    np.testing.assert_array_equal(server.result(), _sum(vectors, masked))
