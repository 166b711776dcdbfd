"""Secure aggregation overhead: masked sum against the plain sum, in the same run.

Run: python bench/bench_secagg.py [--values 10000] [--nodes 10 50] [--repeat 3]

All nodes and the coordinator run in this process (no network), so the
figures are the protocol's own cost: key agreement, Shamir sharing, share
encryption, mask expansion and unmasking. One node drops out after sharing,
so the dropout recovery path is included. Bytes are what one node sends.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from oncofed.privacy.secagg import SecAggNode, SecAggServer, decode_float, encode_float


def masked_sum(vectors: dict[str, np.ndarray], dropped: str | None) -> tuple[np.ndarray, int]:
    names = sorted(vectors)
    identities = {name: Ed25519PrivateKey.generate() for name in names}
    public = {name: key.public_key() for name, key in identities.items()}
    threshold = len(names) // 2 + 1
    nodes = [SecAggNode(n, identities[n], public, "bench", threshold) for n in names]
    adverts = {node.name: node.advertise() for node in nodes}
    sealed = {node.name: node.share(adverts) for node in nodes}
    alive = [node for node in nodes if node.name != dropped]
    masked = {
        node.name: node.mask(
            {s: box[node.name] for s, box in sealed.items() if s != node.name},
            encode_float(vectors[node.name], len(names)),
        )
        for node in alive
    }
    survivors = sorted(masked)
    reveals = {node.name: node.unmask(survivors) for node in alive}
    total = SecAggServer("bench", threshold).aggregate(adverts, names, masked, reveals)
    first = names[0]
    sent = (
        len(adverts[first])
        + sum(len(b) for b in sealed[first].values())
        + masked[first].nbytes
        + len(reveals[first])
    )
    return decode_float(total), sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--values", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(5)
    print(f"{args.values} float values per node; median of {args.repeat} runs")
    print(
        f"{'nodes':>5} {'plain s':>10} {'masked s':>10} {'ratio':>8} {'KB/node':>9} {'max err':>9}"
    )
    for count in args.nodes:
        vectors = {f"node-{i:03d}": rng.normal(0, 100, args.values) for i in range(count)}
        dropped = "node-001"
        plain_times, masked_times = [], []
        for _ in range(args.repeat):
            start = time.perf_counter()
            plain = np.sum([v for k, v in vectors.items() if k != dropped], axis=0)
            plain_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            total, sent = masked_sum(vectors, dropped)
            masked_times.append(time.perf_counter() - start)
        error = float(np.max(np.abs(total - plain)))
        p, m = statistics.median(plain_times), statistics.median(masked_times)
        print(f"{count:>5} {p:>10.5f} {m:>10.3f} {m / p:>8.0f} {sent / 1024:>9.1f} {error:>9.1e}")


if __name__ == "__main__":
    main()
