"""Measuring a cluster for the partition model (``coding.theory.choose_partition``).

Takes about a second at the start of a fit with ``partition="auto"``: a product timed on one
worker (seconds per multiply-add and their spread), an empty exchange (latency), a scatter of a
few megabytes (bandwidth), and how many cores the fit's workers share on each host.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter

import numpy as np
from distributed import Client

from dask_coded_als.coding.theory import ClusterRates

__all__ = ["measure_rates"]

#: Shape of the timed product: (PRODUCT_ROWS x PRODUCT_INNER) times (PRODUCT_INNER x
#: PRODUCT_COLUMNS), about 33 million multiply-adds (a few tens of milliseconds).
PRODUCT_ROWS, PRODUCT_INNER, PRODUCT_COLUMNS = 512, 1024, 64
#: Bytes scattered to time the link.
PROBE_BYTES = 8 * 2**20


def _timed_products(repeats: int, dtype: str = "float64") -> list[float]:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((PRODUCT_ROWS, PRODUCT_INNER)).astype(dtype)
    b = rng.standard_normal((PRODUCT_INNER, PRODUCT_COLUMNS)).astype(dtype)
    a @ b  # first use pays for allocations
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - start)
    return seconds


def _host_and_cores() -> tuple[str, int]:
    return socket.gethostname(), os.cpu_count() or 1


def _nothing() -> None:
    return None


def measure_rates(
    client: Client, addresses: list[str], repeats: int = 7, dtype: str = "float64"
) -> ClusterRates:
    """Rates of the workers at ``addresses`` and of the link to them.

    ``op_mean`` is the median time per multiply-add of a product in ``dtype`` on one worker
    (float32 runs at about twice float64's rate), ``op_std`` the
    spread of those times scaled as Appendix A does (a robust standard deviation of a task's
    time divided by sqrt of its multiply-adds); ``latency`` the median of empty round trips;
    ``bandwidth`` from a direct scatter of :data:`PROBE_BYTES`; ``concurrency`` the number of
    workers that can compute at once (per host, at most its cores).
    """
    worker = addresses[0]
    products = client.submit(_timed_products, repeats, dtype, workers=[worker], pure=False).result()
    n_ops = PRODUCT_ROWS * PRODUCT_INNER * PRODUCT_COLUMNS
    seconds = np.asarray(products)
    op_mean = float(np.median(seconds)) / n_ops
    spread = 1.4826 * float(np.median(np.abs(seconds - np.median(seconds))))
    op_std = spread / np.sqrt(n_ops)

    trips = []
    for _ in range(repeats):
        start = time.perf_counter()
        client.submit(_nothing, workers=[worker], pure=False).result()
        trips.append(time.perf_counter() - start)
    latency = float(np.median(trips))

    probe = np.zeros(PROBE_BYTES // 8)
    start = time.perf_counter()
    future = client.scatter(probe, workers=[worker], direct=True, hash=False)
    elapsed = max(time.perf_counter() - start - latency / 2, 1e-6)
    bandwidth = PROBE_BYTES / elapsed
    del future

    hosts = client.run(_host_and_cores, workers=addresses)
    per_host = Counter(host for host, _ in hosts.values())
    cores = {host: n for host, n in hosts.values()}
    concurrency = float(sum(min(count, cores[host]) for host, count in per_host.items()))
    return ClusterRates(op_mean, op_std, bandwidth, latency, concurrency)
