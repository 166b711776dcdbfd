"""The one timing rule every benchmark here uses: the median of repeated wall times."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], repeat: int, *, warm_up: bool = False) -> float:
    """Median wall time of ``repeat`` calls; ``warm_up`` first makes one untimed call
    (imports, torch's first-use setup) so it does not land in the first sample."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
