"""Secure aggregation overhead: the masked sum against the plain NumPy sum, in the same run.

Run: python bench/bench_secagg.py [--values 10000] [--nodes 10 50] [--repeat 3] [--dropped 1]

All nodes and the coordinator run in this process (no network), so the
figures are the protocol's own cost: key generation and signatures, Shamir
sharing, share encryption, mask expansion, unmasking and fixed-point
encoding. ``--dropped`` nodes drop out after sharing, so the recovery path
(rebuilding their mask keys and every pairwise mask with the survivors) is
included. Bytes are what one surviving node sends over the four stages.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from oncofed.privacy.secagg import FRAC_BITS, SecAggNode, SecAggServer, decode, encode


def masked_sum(
    vectors: dict[str, np.ndarray], dropped: set[str], identities: dict[str, Ed25519PrivateKey]
) -> tuple[np.ndarray, dict[str, int]]:
    """Every stage for every node, relayed through the server; (total, bytes sent by a node)."""
    names = sorted(vectors)
    pinned = {name: key.public_key() for name, key in identities.items()}
    threshold = len(names) // 2 + 1
    session = "bench/round-1"
    nodes = [SecAggNode(n, identities[n], pinned, session, threshold, names) for n in names]
    length = len(next(iter(vectors.values())))
    server = SecAggServer(names, threshold, length)
    sent = dict.fromkeys(names, 0)
    for node in nodes:
        advert = node.advertise()
        sent[node.name] += len(advert)
        server.receive_advert(node.name, advert)
    relayed = server.adverts()
    for node in nodes:
        sealed = node.share(relayed)
        sent[node.name] += sum(len(box) for box in sealed.values())
        server.receive_shares(node.name, sealed)
    for node in nodes:
        if node.name in dropped:
            continue
        encoded = encode(vectors[node.name], FRAC_BITS, nodes=len(names))
        masked = node.mask(server.inbox(node.name), encoded)
        sent[node.name] += masked.nbytes
        server.receive_masked(node.name, masked)
    survivors, gone = server.unmask_request()
    for node in nodes:
        if node.name in survivors:
            reveal = node.unmask(survivors, gone)
            sent[node.name] += len(reveal)
            server.receive_unmask(node.name, reveal)
    return decode(server.result(), FRAC_BITS), sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--values", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dropped", type=int, default=1, help="nodes that drop after sharing")
    args = parser.parse_args()
    rng = np.random.default_rng(5)
    print(
        f"{args.values} float values per node, {args.dropped} node(s) dropping after sharing; "
        f"median of {args.repeat} runs"
    )
    print(
        f"{'nodes':>5} {'plain s':>10} {'masked s':>10} {'x plain':>8} "
        f"{'s/node':>8} {'KB/node':>8} {'vector KB':>9} {'max err':>9}"
    )
    for count in args.nodes:
        names = [f"node-{i:03d}" for i in range(count)]
        vectors = {name: rng.normal(0, 100, args.values) for name in names}
        identities = {name: Ed25519PrivateKey.generate() for name in names}  # long-term: not timed
        dropped = set(names[1 : 1 + args.dropped])
        plain_times, masked_times = [], []
        for _ in range(args.repeat):
            start = time.perf_counter()
            plain = np.sum([v for k, v in vectors.items() if k not in dropped], axis=0)
            plain_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            total, sent = masked_sum(vectors, dropped, identities)
            masked_times.append(time.perf_counter() - start)
        error = float(np.max(np.abs(total - plain)))
        p, m = statistics.median(plain_times), statistics.median(masked_times)
        per_node = statistics.median(v for k, v in sent.items() if k not in dropped)
        print(
            f"{count:>5} {p:>10.5f} {m:>10.3f} {m / p:>8.0f} {m / count:>8.4f} "
            f"{per_node / 1024:>8.1f} {8 * args.values / 1024:>9.1f} {error:>9.1e}"
        )


if __name__ == "__main__":
    main()
