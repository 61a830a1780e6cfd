"""What the experiments share: their configurations, synthetic data, the cluster they run on,
and small measurement helpers."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from distributed import Client, LocalCluster

from dask_coded_als.coding import theory
from dask_coded_als.engine import CodedALS
from dask_coded_als.engine.cluster import cluster_for, worker_addresses
from dask_coded_als.errors import ClusterError, InputError

#: The paper's Table I: seconds for k non-stragglers and h x h blocks (m = 2400, n = 1500,
#: d = 200). Reproduced for reference only; the paper does not say what exactly was timed.
PAPER_TABLE1: dict[tuple[int, int], float] = {
    (10, 2): 7.59468,
    (20, 2): 7.376128,
    (20, 3): 3.952123,
    (20, 4): 2.856271,
    (30, 2): 6.581517,
    (30, 3): 3.7818,
    (30, 4): 2.729829,
    (30, 5): 0.113088,
    (40, 2): 6.860791,
    (40, 3): 3.744443,
    (40, 4): 1.285898,
    (40, 5): 0.008618,
    (50, 2): 6.852958,
    (50, 3): 3.778484,
    (50, 4): 0.937565,
    (50, 5): 0.003492,
    (50, 6): 0.000598,
}

#: Seconds allowed for worker processes to start or join.
STARTUP_TIMEOUT = 180.0
#: Seconds allowed for one calibration or one svd_compressed run.
#: Seconds allowed for one calibration or one svd_compressed run.
TASK_TIMEOUT = 600.0


@dataclass(frozen=True)
class Table1Config:
    """Sizes and settings of the Table I experiment.

    Attributes
    ----------
    m, n, d : int
        Rating matrix shape and latent dimension.
    rank : int
        Rank of the noiseless part U V^T of the synthetic data.
    noise : float
        Standard deviation of the added Gaussian noise.
    ks : tuple of int
        Numbers of non-stragglers k (rows of the table).
    hs : tuple of int
        Block counts h (columns of the table).
    n_stragglers : int
        s, fixed stragglers per cell; a cell runs on W = k + s workers.
    straggler_delay : float
        Seconds every task of a straggler is late.
    max_iter : int
        Updates per cell; the first round (warm-up) and the last (objective only) are not timed.
    calibration_repeats : int
        Timed runs of the isolated stage-1 task per h.
    """

    m: int
    n: int
    d: int
    rank: int
    noise: float
    ks: tuple[int, ...]
    hs: tuple[int, ...]
    n_stragglers: int
    straggler_delay: float
    max_iter: int
    calibration_repeats: int


TABLE1_FULL = Table1Config(
    m=2400,
    n=1500,
    d=200,
    rank=200,
    noise=5.0,
    ks=(10, 20, 30, 40, 50),
    hs=(2, 3, 4, 5, 6),
    n_stragglers=2,
    straggler_delay=1.0,
    max_iter=7,
    calibration_repeats=15,
)


TABLE1_QUICK = Table1Config(
    m=240,
    n=150,
    d=20,
    rank=20,
    noise=1.5,
    ks=(10, 20),
    hs=(2, 3, 4, 5, 6),
    n_stragglers=2,
    straggler_delay=0.25,
    max_iter=2,
    calibration_repeats=25,
)


@dataclass(frozen=True)
class BenchConfig:
    """Sizes and settings of the method benchmark.

    Attributes
    ----------
    m, n, d, rank, noise
        As in :class:`Table1Config`.
    n_workers : int
        W, workers of every method.
    h : int
        Block count of the coded method.
    n_stragglers : int
        s: stragglers of the ``fixed`` and ``random`` models, copies - 1 of replication, and
        what the coded method tolerates.
    straggler_delay : float
        Seconds late (``fixed``, ``random``) or mean slowdown (``shifted-exponential``).
    max_iter : int
        Updates per ALS fit (no early stop, so every method runs the same rounds).
    target_gap : float
        Relative objective gap to the truncated-SVD optimum that counts as converged.
    max_power_iter : int
        Largest ``n_power_iter`` tried for ``svd_compressed``.
    repeats : int
        Fits per method and straggler model (and svd_compressed runs per straggler model),
        interleaved; medians are reported.
    straggler_models : tuple of str
        The straggler models compared.
    """

    m: int
    n: int
    d: int
    rank: int
    noise: float
    n_workers: int
    h: int
    n_stragglers: int
    straggler_delay: float
    max_iter: int
    target_gap: float
    max_power_iter: int
    repeats: int = 1
    straggler_models: tuple[str, ...] = ("none", "fixed", "random", "shifted-exponential")


BENCH_FULL = BenchConfig(
    m=2400,
    n=1500,
    d=200,
    rank=200,
    noise=5.0,
    n_workers=13,
    h=3,
    n_stragglers=2,
    straggler_delay=1.0,
    max_iter=10,
    target_gap=1e-6,
    max_power_iter=8,
    repeats=3,
)


BENCH_QUICK = BenchConfig(
    m=240,
    n=150,
    d=20,
    rank=20,
    noise=0.2,  # a wide spectral gap: svd_compressed needs n_power_iter = 1 (a smoke run)
    n_workers=13,
    h=3,
    n_stragglers=2,
    straggler_delay=0.05,
    max_iter=4,
    target_gap=1e-6,
    max_power_iter=6,
    straggler_models=("none", "fixed"),  # a smoke run: every method, two models
)


METHODS = ("coded", "coded-paper", "uncoded", "replication")


#: mode and protocol of each ALS method of the benchmark
METHOD_OPTIONS = {
    "coded": {"mode": "coded", "protocol": "fast"},
    "coded-paper": {"mode": "coded", "protocol": "paper"},
    "uncoded": {"mode": "uncoded"},
    "replication": {"mode": "replication"},
}


def synthetic_ratings(m: int, n: int, rank: int, noise: float, seed: int = 0) -> np.ndarray:
    """Return R = U V^T + noise, the synthetic data of the paper's Sec. V.

    Parameters
    ----------
    m, n : int
        Shape of R.
    rank : int
        Columns of U (m x rank) and V (n x rank), both standard normal.
    noise : float
        Standard deviation of the iid Gaussian noise added to every entry.
    seed : int
        Seed of the generator.

    Returns
    -------
    ndarray
        Shape (m, n), float64.

    Examples
    --------
    >>> synthetic_ratings(4, 3, rank=2, noise=0.0).shape
    (4, 3)
    """
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((m, rank))
    V = rng.standard_normal((n, rank))
    return U @ V.T + noise * rng.standard_normal((m, n))


def rank_d_optimum(R: np.ndarray, d: int) -> float:
    """min ||R - U V^T||_F^2 over rank d: the sum of sigma_i^2 for i > d (scipy.linalg.svd)."""
    import scipy.linalg

    singular = scipy.linalg.svd(R, compute_uv=False)
    return float(np.sum(singular[d:] ** 2))


def table1_cells(ks: Sequence[int], hs: Sequence[int]) -> list[tuple[int, int]]:
    """Return the (k, h) cells of Table I: those with h^2 + h - 1 <= k.

    Parameters
    ----------
    ks, hs : sequence of int
        Non-straggler counts and block counts.

    Returns
    -------
    list of (int, int)
        Cells in row-major order (by k, then h).

    Examples
    --------
    >>> table1_cells([10, 20], [2, 3, 4, 5])
    [(10, 2), (20, 2), (20, 3), (20, 4)]
    """
    return [(k, h) for k in ks for h in hs if theory.recovery_threshold(h) <= k]


def relative_gap(objective: float, optimum: float) -> float:
    """Return (objective - optimum) / optimum, the relative gap to the best rank-d objective.

    Examples
    --------
    >>> relative_gap(1.5, 1.0)
    0.5
    """
    return (float(objective) - float(optimum)) / float(optimum)


def time_to_gap(times: Sequence[float], gaps: Sequence[float], target: float) -> float | None:
    """Cumulative time of the rounds up to the first whose gap is below ``target``.

    Round i reports the objective of the factor entering it, so the gap is known at the end of
    round i: the time is ``times[0] + ... + times[i]``.

    Parameters
    ----------
    times : sequence of float
        Seconds of each round.
    gaps : sequence of float
        Relative gap of each round.
    target : float
        Threshold.

    Returns
    -------
    float or None
        Seconds, or None if no round reached the target.

    Examples
    --------
    >>> time_to_gap([1.0, 2.0, 3.0], [1e-1, 1e-7, 1e-9], 1e-6)
    3.0
    >>> time_to_gap([1.0], [1e-1], 1e-6) is None
    True
    """
    total = 0.0
    for seconds, gap in zip(times, gaps, strict=True):
        total += seconds
        if gap < target:
            return total
    return None


def median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))


def timed_rounds(history: list[dict]) -> list[dict]:
    """The rounds that update the factor, without the warm-up round: history[1:-1]."""
    return history[1:-1] or history


def n_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def machine() -> dict[str, Any]:
    import dask
    import distributed
    import scipy

    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        memory = float("nan")
    return {
        "cores": n_cores(),
        "memory_gib": round(memory, 1),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "dask": dask.__version__,
        "distributed": distributed.__version__,
    }


def n_workers_of(client: Client) -> int:
    return len(worker_addresses(client))


@contextlib.contextmanager
def using_cluster(
    client: Client | None, n_workers: int
) -> Iterator[tuple[Client, LocalCluster | None]]:
    """The given client (which must have ``n_workers`` workers) or a new LocalCluster."""
    # Closing a large cluster makes workers log failed heartbeats: not worth showing.
    with cluster_for(client, n_workers, silence_logs=logging.CRITICAL) as (active, cluster):
        ensure_workers(active, cluster, n_workers)
        yield active, cluster


def wait_for_workers(client: Client, n_workers: int, timeout: float = STARTUP_TIMEOUT) -> None:
    """Wait (bounded) until the scheduler lists ``n_workers`` workers."""
    deadline = time.monotonic() + timeout
    while (have := n_workers_of(client)) < n_workers:
        if time.monotonic() > deadline:
            raise ClusterError(f"{have} of {n_workers} workers joined within {timeout:g} s")
        time.sleep(0.1)


def ensure_workers(client: Client, cluster: LocalCluster | None, n_workers: int) -> None:
    """Grow an own cluster to ``n_workers`` (and wait for them); check a given one has them."""
    if cluster is None:
        if (have := n_workers_of(client)) < n_workers:
            raise InputError(f"the cluster has {have} workers, the experiment needs {n_workers}")
        return
    if len(cluster.workers) < n_workers:
        cluster.scale(n_workers)
    wait_for_workers(client, n_workers)


def fit_addresses(client: Client, n_workers: int) -> list[str]:
    """The workers a fit on ``n_workers`` uses (the engine takes the first in sorted order)."""
    return sorted(worker_addresses(client))[:n_workers]


def warm_up(
    client: Client,
    R: np.ndarray,
    D: np.ndarray,
    d: int,
    n_workers: int,
    h: int | None,
    **options: Any,
) -> None:
    """One untimed update (no stragglers) so that timed fits do not pay first-use costs."""
    CodedALS(n_factors=d, n_workers=n_workers, h=h, max_iter=1, tol=0.0, seed=0, **options).fit(
        R, client=client, gram=D
    )


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b
