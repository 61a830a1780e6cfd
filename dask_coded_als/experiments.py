"""Reproducible experiments: the paper's Table I and the method benchmark, with tables and plots.

Two entry points, used by the ``table1`` and ``bench`` subcommands and by the scripts in
``pipelines/``:

* :func:`run_table1`: the time of one coded ALS iteration for every (k, h) cell of the paper's
  Table I (k non-stragglers, D split into h x h blocks, a cell wherever h^2 + h - 1 <= k),
  measured on a LocalCluster, beside the expected-time model of the paper's Appendix A
  (:mod:`dask_coded_als.theory`) calibrated on this machine.
* :func:`run_bench`: coded vs uncoded vs replication vs ``dask.array.linalg.svd_compressed``
  under four straggler models: time per iteration, time to a relative objective gap of 1e-6
  from the truncated-SVD optimum, bytes moved per iteration.

Both write Markdown, JSON and PNG files into an output folder and return a JSON-serializable
dict with the ``files`` written and the ``wall_time``. matplotlib is imported only when a plot
is drawn, with the Agg backend.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import random
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client, LocalCluster, WorkerPlugin, as_completed

from dask_coded_als import theory
from dask_coded_als.cluster import worker_addresses
from dask_coded_als.codes import ALSCode, NumericalWarning
from dask_coded_als.engine import CodedALS, local_cluster
from dask_coded_als.errors import ClusterError, InputError
from dask_coded_als.stragglers import StragglerModel

__all__ = [
    "BENCH_FULL",
    "BENCH_QUICK",
    "PAPER_TABLE1",
    "TABLE1_FULL",
    "TABLE1_QUICK",
    "BenchConfig",
    "Table1Config",
    "calibrate_stage1",
    "relative_gap",
    "run_bench",
    "run_table1",
    "synthetic_ratings",
    "table1_cells",
    "time_to_gap",
]

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
TASK_TIMEOUT = 600.0


# ---- configuration ----------------------------------------------------------------------------


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
    noise=1.5,
    n_workers=13,
    h=3,
    n_stragglers=2,
    straggler_delay=0.05,
    max_iter=4,
    target_gap=1e-6,
    max_power_iter=6,
)

METHODS = ("coded", "coded-paper", "uncoded", "replication")
#: mode and protocol of each ALS method of the benchmark
METHOD_OPTIONS = {
    "coded": {"mode": "coded", "protocol": "fast"},
    "coded-paper": {"mode": "coded", "protocol": "paper"},
    "uncoded": {"mode": "uncoded"},
    "replication": {"mode": "replication"},
}


# ---- data and small helpers -------------------------------------------------------------------


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


def _optimum(R: np.ndarray, d: int) -> float:
    """min ||R - U V^T||_F^2 over rank d: the sum of sigma_i^2 for i > d (scipy.linalg.svd)."""
    import scipy.linalg

    singular = scipy.linalg.svd(R, compute_uv=False)
    return float(np.sum(singular[d:] ** 2))


def _gram(R: np.ndarray) -> np.ndarray:
    """D = R^T R (m >= n) or R R^T, as the engine builds it."""
    return R.T @ R if R.shape[0] >= R.shape[1] else R @ R.T


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


def _median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))


def _timed_rounds(history: list[dict]) -> list[dict]:
    """The rounds that update the factor, without the warm-up round: history[1:-1]."""
    return history[1:-1] or history


def _n_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _machine() -> dict[str, Any]:
    import dask
    import distributed
    import scipy

    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        memory = float("nan")
    return {
        "cores": _n_cores(),
        "memory_gib": round(memory, 1),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "dask": dask.__version__,
        "distributed": distributed.__version__,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(_jsonable(payload), indent=2) + "\n")


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 1e-3:
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"
    return f"{value:.1e}"


def _n_workers_of(client: Client) -> int:
    return len(worker_addresses(client))


@contextlib.contextmanager
def _cluster(client: Client | None, n_workers: int) -> Iterator[tuple[Client, LocalCluster | None]]:
    """The given client (which must have ``n_workers`` workers) or a new LocalCluster."""
    if client is not None:
        have = _n_workers_of(client)
        if have < n_workers:
            raise InputError(f"the cluster has {have} workers, the experiment needs {n_workers}")
        yield client, None
        return
    with (
        # Closing a large cluster makes workers log failed heartbeats: not worth showing.
        local_cluster(n_workers, silence_logs=logging.CRITICAL) as cluster,
        Client(cluster, timeout="60s", set_as_default=False) as own,
    ):
        _wait_for_workers(own, n_workers)
        yield own, cluster


def _wait_for_workers(client: Client, n_workers: int) -> None:
    try:
        client.wait_for_workers(n_workers, timeout=STARTUP_TIMEOUT)
    except TimeoutError:
        raise ClusterError(
            f"{_n_workers_of(client)} of {n_workers} workers joined within {STARTUP_TIMEOUT:g} s"
        ) from None


def _ensure_workers(client: Client, cluster: LocalCluster | None, n_workers: int) -> None:
    """Grow an own cluster to ``n_workers``; check a given one has at least that many."""
    if cluster is not None and len(cluster.workers) < n_workers:
        cluster.scale(n_workers)
    if cluster is None and _n_workers_of(client) < n_workers:
        raise InputError(
            f"the cluster has {_n_workers_of(client)} workers, the cell needs {n_workers}"
        )
    _wait_for_workers(client, n_workers)


def _addresses(client: Client, n_workers: int) -> list[str]:
    """The workers a fit on ``n_workers`` uses (the engine takes the first in sorted order)."""
    return sorted(worker_addresses(client))[:n_workers]


# ---- calibration of the Appendix-A model -------------------------------------------------------


def _time_stage1(code: ALSCode, shard: np.ndarray, factor: np.ndarray, repeats: int) -> list:
    """Run on a worker: one untimed and ``repeats`` timed stage-1 products."""
    code.stage1(shard, factor)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        code.stage1(shard, factor)
        times.append(time.perf_counter() - start)
    return times


def calibrate_stage1(
    client: Client,
    D: np.ndarray,
    n_factors: int,
    hs: Sequence[int],
    n_stragglers: int,
    repeats: int,
    seed: int = 0,
) -> dict[int, dict[str, float]]:
    """Time the stage-1 task of coded ALS alone on one worker, for every h.

    The task is the one the engine runs (``ALSCode.stage1`` on worker 0's coded shard of D and
    its factor shard), timed inside the worker while every other worker is idle, so it has a
    core to itself: this is the per-worker time of the model's "one worker per core" setting.

    Parameters
    ----------
    client : distributed.Client
        The cluster; the first worker in sorted order runs the tasks.
    D : ndarray
        The l x l data matrix.
    n_factors : int
        d.
    hs : sequence of int
        Block counts to time.
    n_stragglers : int
        s; the code of each h is built for W = h^2 + h - 1 + s workers.
    repeats : int
        Timed runs per h (after one untimed run).
    seed : int
        Seed of the factor.

    Returns
    -------
    dict of int to dict
        Per h: ``median`` and ``std`` seconds, ``n_ops`` (l_pad^2 d / h^2 unit operations of the
        model), ``size`` (l padded as the engine pads it), ``times``.
    """
    from dask_coded_als import als

    worker = _addresses(client, 1)
    out = {}
    for h in hs:
        n_workers = theory.recovery_threshold(h) + n_stragglers
        code = ALSCode(h, n_workers)
        size = code.padded_size(D.shape[0])
        pad = size - D.shape[0]
        Dp = np.pad(D, ((0, pad), (0, pad))) if pad else D
        B = als.initial_factor(size, n_factors, seed)
        shard = code.encode_data(Dp, [0])[0]
        factor = code.encode_factor(B)[0]
        shard_f, factor_f = client.scatter([shard, factor], workers=worker, hash=False)
        future = client.submit(
            _time_stage1, code, shard_f, factor_f, repeats, workers=worker, pure=False
        )
        times = future.result(timeout=TASK_TIMEOUT)
        client.cancel([shard_f, factor_f, future])
        out[h] = {
            "median": _median(times),
            "std": _robust_std(times),
            "n_ops": size * size * n_factors / (h * h),
            "size": size,
            "times": [float(t) for t in times],
        }
    return out


def _robust_std(times: Sequence[float]) -> float:
    """1.4826 x the median absolute deviation: the standard deviation of normal data, without
    letting one run that the operating system interrupted dominate it."""
    x = np.asarray(times, dtype=np.float64)
    return float(1.4826 * np.median(np.abs(x - np.median(x)))) if x.size > 1 else 0.0


def _model_parameters(calibration: dict[int, dict[str, float]]) -> dict[str, float]:
    """op_mean and op_std from the largest calibrated task (the smallest h).

    The model says a task of N unit operations takes N op_mean on average with standard
    deviation sqrt(N) op_std; the largest task has the least fixed overhead per operation.
    """
    h_ref = min(calibration)
    ref = calibration[h_ref]
    return {
        "h_ref": h_ref,
        "op_mean": ref["median"] / ref["n_ops"],
        "op_std": ref["std"] / math.sqrt(ref["n_ops"]),
    }


def _shared_core_estimate(
    h: int, n_workers: int, size: int, d: int, op_mean: float, cores: int
) -> float:
    """Seconds of an iteration if all W workers' stage-1 tasks share ``cores`` cores (total
    work / cores): an upper bound, since the late ones are stopped before they finish."""
    n_ops = size * size * d / h**2
    return n_workers * n_ops * op_mean / cores


# ---- Table I -----------------------------------------------------------------------------------


def _warm_up(
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


def _run_cell(
    client: Client,
    R: np.ndarray,
    D: np.ndarray,
    cfg: Table1Config,
    k: int,
    h: int,
    seed: int,
    optimum: float,
) -> dict[str, Any]:
    """One coded fit on W = k + s workers with s fixed stragglers; medians of its rounds."""
    n_workers = k + cfg.n_stragglers
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NumericalWarning)
        model = _fit_cell(client, R, D, cfg, n_workers, h, seed)
    worst = [
        float(match.group(1))
        for w in caught
        if issubclass(w.category, NumericalWarning)
        and (match := re.search(r"relative error near ([0-9.e+-]+)", str(w.message)))
    ]
    for w in caught:
        if not issubclass(w.category, NumericalWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    summary = _summarize_cell(model, cfg, n_workers, seed)
    summary["final_gap"] = relative_gap(model.history_[-1]["objective"], optimum)
    summary["decode_warnings"] = len(worst)
    summary["worst_expected_decode_error"] = max(worst, default=None)
    return summary


def _fit_cell(
    client: Client,
    R: np.ndarray,
    D: np.ndarray,
    cfg: Table1Config,
    n_workers: int,
    h: int,
    seed: int,
) -> CodedALS:
    return CodedALS(
        n_factors=cfg.d,
        n_workers=n_workers,
        h=h,
        n_stragglers=cfg.n_stragglers,
        straggler_model="fixed",
        straggler_delay=cfg.straggler_delay,
        max_iter=cfg.max_iter,
        tol=0.0,
        seed=seed,
    ).fit(R, client=client, gram=D)


def _summarize_cell(model: CodedALS, cfg: Table1Config, n_workers: int, seed: int) -> dict:
    """Medians over the timed rounds of one cell's fit."""
    rounds = _timed_rounds(model.history_)
    stragglers = set(
        StragglerModel("fixed", n_workers, cfg.n_stragglers, cfg.straggler_delay, seed=seed).fixed
    )
    stage_seconds = {"E": _median([r["stages"]["E"]["seconds"] for r in rounds])}
    stage_compute = {"E": _median([r["stages"]["E"]["compute"] for r in rounds])}
    straggler_answers = sum(
        len(stragglers & set(stage["used"])) for r in rounds for stage in r["stages"].values()
    )
    return {
        "time": _median([r["time"] for r in rounds]),
        "compute": stage_compute["E"],
        "stage_seconds": stage_seconds,
        "stage_compute": stage_compute,
        "master_seconds": _median([r["master_seconds"] for r in rounds]),
        "cpu_seconds": _median([r["cpu_seconds"] for r in rounds]),
        "bytes_sent": _median([r["bytes_sent"] for r in rounds]),
        "bytes_received": _median([r["bytes_received"] for r in rounds]),
        "rounds_timed": len(rounds),
        "straggler_answers_used": straggler_answers,
    }


def run_table1(
    quick: bool = False,
    out_dir: Path = Path("docs/results"),
    seed: int = 0,
    client: Client | None = None,
) -> dict[str, Any]:
    """Measure the paper's Table I on a LocalCluster and set the Appendix-A model beside it.

    For every cell (k, h) with h^2 + h - 1 <= k a coded fit runs on W = k + s worker processes
    (s = 2 fixed stragglers, late by ``straggler_delay`` seconds in every task) with D passed
    in precomputed. Per cell: the median time of an iteration at the master, the median
    compute time of the workers' stage-1 task inside the cluster, the stage-1 task timed alone
    on one worker, the Appendix-A expected iteration time (one core per worker) and the
    total-work estimate for the cores of this machine.

    The model is calibrated once: op_mean = (isolated stage-1 seconds) / (l^2 d / h^2) and
    op_std = (their robust standard deviation) / sqrt(l^2 d / h^2), both at the smallest h (the
    largest task). Each task is one worker's work per the paper's eq. (41), so the model
    predicts the per-worker time on a dedicated core.

    Parameters
    ----------
    quick : bool
        Small sizes (m = 240, n = 150, d = 20, 2 updates, k in {10, 20}) for a smoke run.
    out_dir : Path
        Folder for ``table1.md``, ``table1.json`` and ``table1.png`` (created if needed).
    seed : int
        Seed of the data, the initial factor and the stragglers.
    client : distributed.Client or None
        A cluster with at least max(k) + s workers; None starts a LocalCluster on 127.0.0.1
        and grows it from min(k) + s to max(k) + s workers as k grows, so every cell runs with
        exactly W = k + s processes.

    Returns
    -------
    dict
        ``cells`` (one dict per cell: ``k``, ``h``, ``W``, ``K``, ``time``, ``compute``,
        ``isolated``, ``model``, ``model_stage1``, ``shared_estimate``, ``paper``, ...),
        ``calibration``, ``model_parameters``, ``config``, ``machine``, ``files``,
        ``wall_time``.
    """
    t_start = time.perf_counter()
    cfg = TABLE1_QUICK if quick else TABLE1_FULL
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = table1_cells(cfg.ks, cfg.hs)
    if not cells:
        raise InputError("no (k, h) cell satisfies h^2 + h - 1 <= k")
    hs = sorted({h for _, h in cells})
    R = synthetic_ratings(cfg.m, cfg.n, cfg.rank, cfg.noise, seed)
    D = _gram(R)
    optimum = _optimum(R, cfg.d)
    cores = _n_cores()
    first_w = min(k for k, _ in cells) + cfg.n_stragglers
    last_w = max(k for k, _ in cells) + cfg.n_stragglers
    results = []
    with _cluster(client, first_w if client is None else last_w) as (active, cluster):
        calibration = calibrate_stage1(
            active, D, cfg.d, hs, cfg.n_stragglers, cfg.calibration_repeats, seed
        )
        params = _model_parameters(calibration)
        warm: set[int] = set()
        for k, h in cells:
            n_workers = k + cfg.n_stragglers
            _ensure_workers(active, cluster, n_workers)
            if n_workers not in warm:
                # One untimed update on these workers first: the first task on a fresh worker
                # pays for imports and allocations.
                _warm_up(active, R, D, cfg.d, n_workers, h)
                warm.add(n_workers)
            measured = _run_cell(active, R, D, cfg, k, h, seed, optimum)
            # Let the stragglers' last sleeping tasks end before the next cell starts.
            time.sleep(cfg.straggler_delay)
            padded = calibration[h]["size"]
            stages = theory.expected_stage_times(
                h,
                n_workers,
                cfg.n_stragglers,
                padded,
                cfg.d,
                params["op_mean"],
                params["op_std"],
            )
            results.append(
                {
                    "k": k,
                    "h": h,
                    "W": n_workers,
                    "K": theory.recovery_threshold(h),
                    **measured,
                    "isolated": calibration[h]["median"],
                    "model": math.fsum(s.expected for s in stages.values()),
                    "model_stage1": stages[1].expected,
                    "shared_estimate": _shared_core_estimate(
                        h, n_workers, padded, cfg.d, params["op_mean"], cores
                    ),
                    "paper": PAPER_TABLE1.get((k, h)) if not quick else None,
                }
            )
        n_processes = _n_workers_of(active)
    wall_time = time.perf_counter() - t_start
    result = {
        "experiment": "table1",
        "quick": quick,
        "seed": seed,
        "config": asdict(cfg),
        "machine": _machine(),
        "cluster": {"own": client is None, "processes_at_end": n_processes},
        "calibration": {str(h): c for h, c in calibration.items()},
        "model_parameters": params,
        "cells": results,
    }
    files = [out_dir / "table1.json", out_dir / "table1.md", out_dir / "table1.png"]
    result["files"] = [str(p) for p in files]
    result["wall_time"] = time.perf_counter() - t_start
    _write_table1_markdown(files[1], result, wall_time)
    _plot_table1(files[2], result)
    result["wall_time"] = time.perf_counter() - t_start
    _write_json(files[0], result)
    return _jsonable(result)


def _write_table1_markdown(path: Path, result: dict, wall_time: float) -> None:
    cfg = result["config"]
    machine = result["machine"]
    params = result["model_parameters"]
    cells = result["cells"]
    command = "dask-coded-als table1" + (" --quick" if result["quick"] else "")
    s = cfg["n_stragglers"]
    lines = [
        "# Table I: time per iteration for every (k, h)",
        "",
        "Generated by `" + command + "` (also `python pipelines/table1.py`); "
        f"wall time {wall_time:.0f} s. Machine: {machine['cores']} cores, "
        f"{machine['memory_gib']} GiB, Python {machine['python']}, numpy {machine['numpy']}, "
        f"dask/distributed {machine['distributed']}.",
        "",
        f"Data: R = U V^T + noise, m = {cfg['m']}, n = {cfg['n']}, rank {cfg['rank']}, noise "
        f"std {cfg['noise']:g}; d = {cfg['d']}; D = R^T R ({cfg['n']} x {cfg['n']}) passed in "
        f"precomputed. A cell exists where K = h^2 + h - 1 <= k.",
        "",
        f"Layout: every cell runs on W = k + {s} worker processes (one thread each) on "
        f"127.0.0.1, with {s} fixed stragglers {cfg['straggler_delay']:g} s late in every task "
        "(they compute, then sleep), so the master decodes from the k others. One LocalCluster "
        "is grown from the smallest W to the largest as k grows, so no idle process sits in a "
        f"cell. Before the first cell of each W one untimed update warms the workers up. Each "
        f"cell runs {cfg['max_iter']} updates; medians over the rounds that update the factor "
        "after the first.",
        "",
        "Columns:",
        "",
        "- **master**: median seconds of one iteration at the master (the default protocol: one "
        "exchange, encode, decode, the d x d algebra, transfers).",
        "- **task in cluster**: median compute seconds of the stage-1 task (E = D B) of the "
        "workers whose results were used, timed inside the task while all W processes share "
        f"the {machine['cores']} cores.",
        "- **task alone**: the same task timed alone on one worker (a core to itself); median "
        f"of {cfg['calibration_repeats']} runs (std: 1.4826 x their median absolute deviation).",
        "- **model**: the Appendix-A expected iteration time (one core per worker, the K-th "
        "fastest of the k non-stragglers per stage, Royston's approximation), calibrated with "
        f"op_mean = {params['op_mean']:.3e} s and op_std = {params['op_std']:.3e} s per unit "
        f"operation from the task alone at h = {params['h_ref']} "
        "(op_mean = median / N and op_std = std / sqrt(N) with N = l^2 d / h^2, as the "
        "model's eq. 41 says a task of N operations has mean N op_mean and variance "
        "N op_std^2); **model stage 1** is its stage-1 term, to set beside the task alone.",
        f"- **total work / {machine['cores']} cores**: W x (per-worker operations of stage 1) x "
        f"op_mean / {machine['cores']}: what an iteration costs when every process "
        "shares the machine's cores and no late task is stopped (an upper bound).",
        "- **paper**: the paper's Table I, for reference (its setup and what it timed are not "
        "stated).",
        "",
        "| k | h | W | K | master (s) | model (s) | task in cluster (s) | task alone (s) "
        f"| model stage 1 (s) | total work / {machine['cores']} cores (s) | paper (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        lines.append(
            f"| {c['k']} | {c['h']} | {c['W']} | {c['K']} | {_fmt(c['time'])} | "
            f"{_fmt(c['model'])} | {_fmt(c['compute'])} | {_fmt(c['isolated'])} | "
            f"{_fmt(c['model_stage1'])} | {_fmt(c['shared_estimate'])} | "
            f"{_fmt(c['paper'], 4)} |"
        )
    if any(c["model"] <= 0 or c["model_stage1"] <= 0 for c in cells):
        lines += [
            "",
            "Some model values are not positive: where sqrt(N) op_std is comparable to "
            "N op_mean, the normal approximation of a task's time (eq. 41) puts an early order "
            "statistic below zero; the model does not apply to tasks this small.",
        ]
    lines += [
        "",
        "Where the master's iteration goes (medians, seconds): the wait for K answers of the "
        "one exchange (sending the operands, the workers' products, fetching the answers), "
        "the master's own work (encoding, decoding, B^T B, B^T E, G and E G) and the rest; "
        "the workers' CPU seconds per iteration (every task, the late ones included); "
        "megabytes sent to / received from the workers per iteration. Accuracy: the relative "
        f"gap of the objective after {cfg['max_iter']} updates to the rank-d optimum (the SVD), "
        "and the decodes for which the code warned of an ill-conditioned set of answering "
        "workers, with the worst relative error it announced.",
        "",
        "| k | h | wait for K | master | rest | worker CPU (s) | MB sent "
        "| MB received | final gap | decode warnings (worst error) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        waits = c["stage_seconds"]
        rest = c["time"] - sum(waits.values()) - c["master_seconds"]
        lines.append(
            f"| {c['k']} | {c['h']} | "
            + _fmt(waits["E"])
            + f" | {_fmt(c['master_seconds'])} | {_fmt(rest)} | {_fmt(c['cpu_seconds'])} "
            f"| {c['bytes_sent'] / 1e6:.1f} "
            f"| {c['bytes_received'] / 1e6:.1f} | {c['final_gap']:.1e} | "
            + (
                f"{c['decode_warnings']} ({c['worst_expected_decode_error']:.0e})"
                if c["decode_warnings"]
                else "0"
            )
            + " |"
        )
    used = sum(c["straggler_answers_used"] for c in cells)
    lines += [
        "",
        "Grids (rows k, columns h), seconds:",
        "",
    ]
    for key, title in (
        ("time", "master, measured"),
        ("compute", "stage-1 task in cluster, measured"),
        ("model", "Appendix-A model, one core per worker"),
        ("paper", "paper"),
    ):
        if key == "paper" and all(c["paper"] is None for c in cells):
            continue
        lines += _grid(cells, key, title, cfg["ks"], cfg["hs"])
    lines += [
        f"Results of the {s} stragglers the master used over all timed rounds: {used}"
        + (" (it never needed a straggler)." if used == 0 else "."),
        "",
        "Stage-1 task alone, per h (seconds; N = l^2 d / h^2; per-operation time):",
        "",
        "| h | l (padded) | N | median (s) | std (s) | seconds per operation |",
        "|---|---|---|---|---|---|",
    ]
    for h, c in result["calibration"].items():
        lines.append(
            f"| {h} | {c['size']} | {c['n_ops']:.3g} | {_fmt(c['median'])} | "
            f"{_fmt(c['std'])} | {c['median'] / c['n_ops']:.3e} |"
        )
    lines += ["", "![time against h](table1.png)", ""]
    path.write_text("\n".join(lines))


def _grid(cells: list[dict], key: str, title: str, ks: list, hs: list) -> list[str]:
    by = {(c["k"], c["h"]): c[key] for c in cells}
    lines = [f"**{title}**", "", "| k \\ h | " + " | ".join(f"h = {h}" for h in hs) + " |"]
    lines.append("|---" * (len(hs) + 1) + "|")
    for k in ks:
        row = [(_fmt(by[(k, h)], 4) if (k, h) in by else "-") for h in hs]
        lines.append(f"| k = {k} | " + " | ".join(row) + " |")
    lines.append("")
    return lines


def _pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_table1(path: Path, result: dict) -> None:
    plt = _pyplot()
    cells = result["cells"]
    ks = sorted({c["k"] for c in cells})
    cores = result["machine"]["cores"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), sharey=False)
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(len(ks), 1)))
    for color, k in zip(colors, ks, strict=True):
        row = sorted((c for c in cells if c["k"] == k), key=lambda c: c["h"])
        h = [c["h"] for c in row]
        axes[0].plot(h, [c["time"] for c in row], "o-", color=color, label=f"k = {k}")
        axes[0].plot(h, [c["shared_estimate"] for c in row], ":", color=color)
        axes[1].plot(h, [c["compute"] for c in row], "o-", color=color, label=f"k = {k}")
        axes[2].plot(h, [c["model"] for c in row], "o--", color=color, label=f"k = {k}")
        paper = [(c["h"], c["paper"]) for c in row if c["paper"] is not None]
        if paper:
            axes[2].plot(*zip(*paper, strict=True), "x:", color=color, alpha=0.6)
    calibration = result["calibration"]
    hs = sorted(int(h) for h in calibration)
    axes[1].plot(
        hs, [calibration[str(h)]["median"] for h in hs], "ks-", label="task alone (1 core)"
    )
    widest = sorted((c for c in cells if c["k"] == ks[-1]), key=lambda c: c["h"])
    axes[1].plot(
        [c["h"] for c in widest],
        [c["model_stage1"] for c in widest],
        "--",
        color="grey",
        label=f"model, stage 1 (k = {ks[-1]})",
    )
    axes[0].set_title(f"master: iteration (dotted: total work / {cores} cores)")
    axes[1].set_title("stage-1 task: in the cluster (lines) and alone")
    axes[2].set_title("iteration: Appendix-A model (x: paper's Table I)")
    for ax in axes:
        ax.set_xlabel("h")
        ax.set_ylabel("seconds")
        ax.set_yscale("log")
        ax.set_xticks(sorted({c["h"] for c in cells}))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Table I: m = {result['config']['m']}, n = {result['config']['n']}, "
        f"d = {result['config']['d']}, W = k + {result['config']['n_stragglers']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- the method benchmark ----------------------------------------------------------------------


class _DelayPlugin(WorkerPlugin):
    """Make worker tasks late the way the engine's straggler models do, for dask.array graphs.

    After a task finishes on a straggling worker, the worker's event loop sleeps before the
    result is registered: ``fixed`` delays every task of the chosen workers by ``delay``
    seconds, ``random`` delays each task with probability s / W, ``shifted-exponential`` by
    X times the task's compute time with X exponential of mean ``delay``. The worker reports
    its result, and serves the data it holds, that much later.
    """

    name = "dask-coded-als-delays"

    def __init__(
        self, model: str, delay: float, slow: Sequence[str], probability: float, seed: int
    ):
        self.model = model
        self.delay = float(delay)
        self.slow = set(slow)
        self.probability = float(probability)
        self.seed = int(seed)

    def setup(self, worker: Any) -> None:
        self.worker = worker
        self.rng = random.Random(f"{self.seed}-{worker.address}")

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if start != "executing" or finish != "memory":
            return
        pause = 0.0
        if self.model == "fixed" and self.worker.address in self.slow:
            pause = self.delay
        elif self.model == "random" and self.rng.random() < self.probability:
            pause = self.delay
        elif self.model == "shifted-exponential" and self.delay > 0:
            ts = self.worker.state.tasks.get(key)
            spans = [s["stop"] - s["start"] for s in getattr(ts, "startstops", ())]
            spans = [x for x in spans if x > 0]
            pause = self.rng.expovariate(1.0 / self.delay) * (spans[-1] if spans else 0.0)
        if pause > 0:
            time.sleep(pause)


def _wait_all(client: Client, futures: list, timeout: float = TASK_TIMEOUT) -> None:
    """Wait (bounded) until every future is done; raise the first task error."""
    for future in as_completed(futures, timeout=timeout, loop=client.loop):
        if future.status == "error":
            raise future.exception()


def _place_rows(client: Client, R: np.ndarray, addresses: list[str]) -> tuple[Any, list, float]:
    """Scatter R in ``len(addresses)`` row blocks, block i to worker i; the dask array of them."""
    import dask.array as da

    start = time.perf_counter()
    edges = np.linspace(0, R.shape[0], len(addresses) + 1).astype(int)
    blocks = [np.ascontiguousarray(R[a:b]) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    futures = [
        client.scatter(block, workers=[address], hash=False, timeout=TASK_TIMEOUT)
        for block, address in zip(blocks, addresses, strict=True)
    ]
    X = da.concatenate(
        [
            da.from_delayed(f, shape=block.shape, dtype=block.dtype)
            for f, block in zip(futures, blocks, strict=True)
        ]
    )
    return X, futures, time.perf_counter() - start


def _svd_compressed_run(
    client: Client,
    X: Any,
    addresses: list[str],
    d: int,
    n_power_iter: int,
    seed: int,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Wall time of one svd_compressed on the cluster, and its factors gathered at the master."""
    import dask.array as da

    start = time.perf_counter()
    u, s, v = da.linalg.svd_compressed(X, d, n_power_iter=n_power_iter, seed=seed)
    futures = client.compute([u, s, v], workers=addresses, allow_other_workers=False)
    _wait_all(client, futures)
    u, s, v = client.gather(futures)
    seconds = time.perf_counter() - start
    client.cancel(futures)
    return seconds, np.asarray(u), np.asarray(s), np.asarray(v)


def _svd_gap(R: np.ndarray, u: np.ndarray, s: np.ndarray, v: np.ndarray, optimum: float) -> float:
    residual = R - (u * s) @ v
    return relative_gap(float(np.sum(residual * residual)), optimum)


def _fit_method(
    client: Client,
    R: np.ndarray,
    D: np.ndarray,
    cfg: BenchConfig,
    method: str,
    model: str,
    seed: int,
) -> CodedALS:
    kwargs: dict[str, Any] = dict(METHOD_OPTIONS[method])
    if kwargs["mode"] == "coded":
        kwargs["h"] = cfg.h
    return CodedALS(
        n_factors=cfg.d,
        n_workers=cfg.n_workers,
        n_stragglers=cfg.n_stragglers,
        straggler_model=model,
        straggler_delay=cfg.straggler_delay if model != "none" else 0.0,
        max_iter=cfg.max_iter,
        tol=0.0,
        seed=seed,
        **kwargs,
    ).fit(R, client=client, gram=D)


def run_bench(
    quick: bool = False,
    out_dir: Path = Path("docs/results"),
    seed: int = 0,
    client: Client | None = None,
) -> dict[str, Any]:
    """Compare coded, uncoded and replicated ALS with ``svd_compressed`` under straggler models.

    On one cluster of W workers and one synthetic R, every ALS method is fitted under each
    straggler model (``none``, ``fixed``, ``random``, ``shifted-exponential``) for a fixed
    number of updates. The optimum of the objective ``||R - U V^T||_F^2`` over rank d is the
    sum of the squared singular values of R beyond the d-th (``scipy.linalg.svd``); the
    relative gap of round i is ``(history_[i]["objective"] - optimum) / optimum`` and the time
    to the target gap is the cumulative round time until the gap is below it.

    Every method starts from R on the workers: R is scattered once in W row blocks (block i on
    worker i), D = R^T R is computed from them on the cluster once (timed; every ALS fit gets
    this D and counts its time, with the fit's shard placement, as *setup*), and
    ``dask.array.linalg.svd_compressed`` runs on the same blocks and workers. Its
    ``n_power_iter`` is the smallest (up to ``max_power_iter``) reaching the target gap with no
    stragglers, and the same value is used under each straggler model, whose delays a worker
    plugin applies to its tasks (see :class:`_DelayPlugin`).

    Parameters
    ----------
    quick : bool
        Small sizes (m = 240, n = 150, d = 20, 4 updates, stragglers 0.05 s late).
    out_dir : Path
        Folder for ``bench.md``, ``bench.json``, ``bench_iteration.png`` and
        ``bench_convergence.png``.
    seed : int
        Seed of the data, the initial factors, the stragglers and the random sketch.
    client : distributed.Client or None
        A cluster with at least W workers (the first W in sorted order are used); None starts
        a LocalCluster of W processes on 127.0.0.1.

    Returns
    -------
    dict
        ``runs`` (one per method and straggler model), ``svd_compressed``, ``ratios``,
        ``optimum``, ``config``, ``machine``, ``files``, ``wall_time``.
    """
    import scipy.linalg

    t_start = time.perf_counter()
    cfg = BENCH_QUICK if quick else BENCH_FULL
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    R = synthetic_ratings(cfg.m, cfg.n, cfg.rank, cfg.noise, seed)
    singular = scipy.linalg.svd(R, compute_uv=False)
    optimum = float(np.sum(singular[cfg.d :] ** 2))
    svd_search: list[dict[str, Any]] = []
    with _cluster(client, cfg.n_workers) as (active, _):
        addresses = _addresses(active, cfg.n_workers)
        # R in W row blocks, block i on worker i: every method starts from R on the workers.
        X, blocks, place_seconds = _place_rows(active, R, addresses)
        t0 = time.perf_counter()
        D = np.asarray(
            active.compute(X.T @ X, workers=addresses).result(timeout=TASK_TIMEOUT),
            dtype=np.float64,
        )
        gram_seconds = time.perf_counter() - t0
        for method in METHODS:
            options = METHOD_OPTIONS[method]
            coded = options["mode"] == "coded"
            _warm_up(active, R, D, cfg.d, cfg.n_workers, cfg.h if coded else None, **options)
        fits: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for _ in range(cfg.repeats):
            for model_name in cfg.straggler_models:
                for method in METHODS:
                    fit = _fit_method(active, R, D, cfg, method, model_name, seed)
                    fits.setdefault((model_name, method), []).append(
                        _summarize_fit(
                            fit, method, model_name, optimum, cfg.target_gap, gram_seconds
                        )
                    )
                    time.sleep(cfg.straggler_delay)  # let sleeping stragglers finish
        runs = [
            _combine_repeats(fits[(model_name, method)])
            for model_name in cfg.straggler_models
            for method in METHODS
        ]

        # svd_compressed: the smallest n_power_iter reaching the target without stragglers,
        # then that n_power_iter under every straggler model, ``repeats`` times.
        chosen = None
        for q in range(cfg.max_power_iter + 1):
            seconds, u, s, v = _svd_compressed_run(active, X, addresses, cfg.d, q, seed)
            gap = _svd_gap(R, u, s, v, optimum)
            svd_search.append(_svd_record("none", q, [seconds], gap, u, s, v))
            if gap < cfg.target_gap:
                chosen = q
                break
        q_used = cfg.max_power_iter if chosen is None else chosen
        fixed = StragglerModel(
            "fixed", cfg.n_workers, cfg.n_stragglers, cfg.straggler_delay, seed=seed
        ).fixed
        svd_seconds: dict[str, list[float]] = {m: [] for m in cfg.straggler_models}
        svd_last: dict[str, tuple] = {}
        if chosen is not None and "none" in svd_seconds:
            svd_seconds["none"].append(svd_search[-1]["seconds"])
            svd_last["none"] = (svd_search[-1]["gap"], u, s, v)
        for _ in range(cfg.repeats):
            for model_name in cfg.straggler_models:
                if len(svd_seconds[model_name]) >= cfg.repeats:
                    continue
                plugin = _DelayPlugin(
                    model_name,
                    cfg.straggler_delay,
                    [addresses[w] for w in fixed],
                    cfg.n_stragglers / cfg.n_workers,
                    seed,
                )
                if model_name != "none":
                    active.register_plugin(plugin, name=_DelayPlugin.name)
                try:
                    seconds, u, s, v = _svd_compressed_run(
                        active, X, addresses, cfg.d, q_used, seed
                    )
                finally:
                    if model_name != "none":
                        active.unregister_worker_plugin(_DelayPlugin.name)
                svd_seconds[model_name].append(seconds)
                svd_last[model_name] = (_svd_gap(R, u, s, v, optimum), u, s, v)
                time.sleep(cfg.straggler_delay)
        svd_runs = [
            _svd_record(m, q_used, svd_seconds[m], *svd_last[m]) for m in cfg.straggler_models
        ]
        active.cancel(blocks)
    wall_time = time.perf_counter() - t_start
    result = {
        "experiment": "bench",
        "quick": quick,
        "seed": seed,
        "config": asdict(cfg),
        "machine": _machine(),
        "optimum": optimum,
        "singular_values": {
            "d": float(singular[cfg.d - 1]),
            "d+1": float(singular[cfg.d]),
        },
        "place_seconds": place_seconds,
        "gram_seconds": gram_seconds,
        "runs": runs,
        "svd_compressed": {
            "n_power_iter": q_used,
            "reached_target": chosen is not None,
            "bytes_input": int(R.nbytes),
            "search": svd_search,
            "runs": svd_runs,
        },
    }
    result["ratios"] = _bench_ratios(result)
    files = [
        out_dir / "bench.json",
        out_dir / "bench.md",
        out_dir / "bench_iteration.png",
        out_dir / "bench_convergence.png",
    ]
    result["files"] = [str(p) for p in files]
    result["wall_time"] = wall_time
    _write_bench_markdown(files[1], result)
    _plot_bench_iteration(files[2], result)
    _plot_bench_convergence(files[3], result)
    result["wall_time"] = time.perf_counter() - t_start
    _write_json(files[0], result)
    return _jsonable(result)


def _svd_record(
    model: str,
    q: int,
    seconds: list[float],
    gap: float,
    u: np.ndarray,
    s: np.ndarray,
    v: np.ndarray,
) -> dict[str, Any]:
    return {
        "straggler_model": model,
        "n_power_iter": q,
        "seconds": _median(seconds),
        "seconds_repeats": [float(x) for x in seconds],
        "gap": gap,
        "bytes_received": int(u.nbytes + s.nbytes + v.nbytes),
    }


def _summarize_fit(
    fit: CodedALS, method: str, model: str, optimum: float, target: float, gram_seconds: float
) -> dict[str, Any]:
    history = fit.history_
    times = [float(e["time"]) for e in history]
    gaps = [relative_gap(e["objective"], optimum) for e in history]
    rounds = _timed_rounds(history)
    to_gap = time_to_gap(times, gaps, target)
    setup = gram_seconds + fit.timings_.get("scatter_data", 0.0)
    return {
        "method": method,
        "straggler_model": model,
        "time_per_iteration": _median([e["time"] for e in rounds]),
        "time_to_gap": to_gap,
        "time_to_gap_with_setup": None if to_gap is None else to_gap + setup,
        "rounds_to_gap": next((i for i, g in enumerate(gaps) if g < target), None),
        "setup_seconds": setup,
        "final_gap": gaps[-1],
        "bytes_sent_per_iteration": _median([e["bytes_sent"] for e in rounds]),
        "bytes_received_per_iteration": _median([e["bytes_received"] for e in rounds]),
        "cpu_seconds_per_iteration": _median([e["cpu_seconds"] for e in rounds]),
        "late_cpu_seconds_per_iteration": _median(
            [sum(s["late_cpu_seconds"] for s in e["stages"].values()) for e in rounds]
        ),
        "master_seconds_per_iteration": _median([e["master_seconds"] for e in rounds]),
        "round_times": times,
        "gaps": gaps,
        "h": getattr(fit, "h_", None),
    }


def _combine_repeats(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """One record for repeated fits: medians of the times; the curves of the median fit."""
    order = sorted(
        range(len(repeats)),
        key=lambda i: math.inf if repeats[i]["time_to_gap"] is None else repeats[i]["time_to_gap"],
    )
    combined = dict(repeats[order[(len(order) - 1) // 2]])
    combined["time_per_iteration"] = _median([r["time_per_iteration"] for r in repeats])
    reached = [r for r in repeats if r["time_to_gap"] is not None]
    if len(reached) == len(repeats):
        combined["time_to_gap"] = _median([r["time_to_gap"] for r in repeats])
        combined["time_to_gap_with_setup"] = _median([r["time_to_gap_with_setup"] for r in repeats])
    combined["repeats"] = [
        {key: r[key] for key in ("time_per_iteration", "time_to_gap", "setup_seconds")}
        for r in repeats
    ]
    return combined


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _bench_ratios(result: dict) -> dict[str, Any]:
    """Per straggler model: every method against coded (time per iteration, time to gap)."""
    runs = {(r["straggler_model"], r["method"]): r for r in result["runs"]}
    svd = {r["straggler_model"]: r for r in result["svd_compressed"]["runs"]}
    out: dict[str, Any] = {}
    for model in result["config"]["straggler_models"]:
        coded = runs.get((model, "coded"))
        if coded is None:
            continue
        entry = {}
        for method in METHODS:
            run = runs.get((model, method))
            if run is None:
                continue
            entry[method] = {
                "time_per_iteration_vs_coded": _ratio(
                    run["time_per_iteration"], coded["time_per_iteration"]
                ),
                "time_to_gap_vs_coded": _ratio(run["time_to_gap"], coded["time_to_gap"]),
            }
        svd_run = svd.get(model)
        if svd_run is not None:
            entry["svd_compressed"] = {
                "time_to_gap_vs_coded": _ratio(svd_run["seconds"], coded["time_to_gap"]),
                "time_vs_coded_with_setup": _ratio(
                    svd_run["seconds"], coded["time_to_gap_with_setup"]
                ),
                "reached_target": svd_run["gap"] < result["config"]["target_gap"],
            }
        out[model] = entry
    return out


def _write_bench_markdown(path: Path, result: dict) -> None:
    cfg = result["config"]
    machine = result["machine"]
    svd = result["svd_compressed"]
    command = "dask-coded-als bench" + (" --quick" if result["quick"] else "")
    target = cfg["target_gap"]
    lines = [
        "# Coded (fast and paper protocols) vs uncoded vs replication vs svd_compressed",
        "",
        f"Generated by `{command}` (also `python pipelines/bench.py`); wall time "
        f"{result['wall_time']:.0f} s. Machine: {machine['cores']} cores, "
        f"{machine['memory_gib']} GiB, Python {machine['python']}, numpy {machine['numpy']}, "
        f"dask/distributed {machine['distributed']}. All numbers below come from this one run; "
        f"each is the median of {cfg['repeats']} interleaved repetition(s) (every fit of every "
        "method and straggler model once, then again), so that slow spells of the machine "
        "spread over all methods.",
        "",
        f"Data: R = U V^T + noise, m = {cfg['m']}, n = {cfg['n']}, rank {cfg['rank']}, noise std "
        f"{cfg['noise']:g}; d = {cfg['d']} (sigma_d = {result['singular_values']['d']:.4g}, "
        f"sigma_d+1 = {result['singular_values']['d+1']:.4g}). Optimum ||R - R_d||_F^2 = "
        f"{result['optimum']:.6g} from scipy.linalg.svd; gap = (objective - optimum) / optimum.",
        "",
        f"Cluster: W = {cfg['n_workers']} worker processes (one thread each) on 127.0.0.1, "
        f"{machine['cores']} cores. ALS: {cfg['max_iter']} updates per fit, no early stop; "
        "one untimed update per method first warms the workers up; "
        f"coded h = {cfg['h']} (K = {theory.recovery_threshold(cfg['h'])}); replication keeps "
        f"{cfg['n_stragglers'] + 1} copies of each of "
        f"{cfg['n_workers'] // (cfg['n_stragglers'] + 1)} row blocks of D; uncoded splits D "
        "by rows over all W.",
        "",
        f"Every method starts from R on the workers: R is scattered once in {cfg['n_workers']} "
        f"row blocks, block i on worker i ({result['svd_compressed']['bytes_input'] / 1e6:.1f} "
        f"MB, {result['place_seconds']:.2f} s, not counted). D = R^T R is computed from them on "
        f"the cluster once ({result['gram_seconds']:.2f} s) and given to every ALS fit; "
        "**setup** = that time + the fit's placement of its shards of D on the workers.",
        "",
        f"Straggler models: **none**; **fixed**: {cfg['n_stragglers']} workers chosen once, "
        f"{cfg['straggler_delay']:g} s late in every task; **random**: {cfg['n_stragglers']} "
        f"workers drawn anew per stage, {cfg['straggler_delay']:g} s late; "
        "**shifted-exponential**: every task's time scaled by 1 + X, X exponential of mean "
        f"{cfg['straggler_delay']:g}.",
        "",
        f"svd_compressed: `dask.array.linalg.svd_compressed(X, {cfg['d']}, "
        f"n_power_iter={svd['n_power_iter']})` (the smallest n_power_iter reaching gap "
        f"{target:g} without stragglers"
        + ("" if svd["reached_target"] else ": **none did up to max_power_iter**")
        + "), on the same row blocks of R and the same W workers. Its time is the wall time "
        "from the call to the factors at the master. "
        "Under a straggler model a worker plugin delays the tasks of the straggling workers "
        "after they finish (the worker reports its result and serves its data that much later); "
        "dask.array tasks are not pinned, so the scheduler may route work around slow workers.",
        "",
        "## Time per iteration and time to the target gap",
        "",
        f"Time to gap {target:g}: cumulative round times (iterations only; *with setup* adds "
        "the D computation and shard placement). Bytes: per iteration, master to workers / "
        "workers to master.",
        "",
        "| straggler model | method | s / iteration (min-max) | vs coded | rounds to gap "
        "| time to gap (s) (min-max) | vs coded | with setup (s) "
        "| worker CPU s / iteration (of late tasks) | bytes sent / received per iteration |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratios = result["ratios"]
    svd_by = {r["straggler_model"]: r for r in svd["runs"]}
    for model in cfg["straggler_models"]:
        for run in (r for r in result["runs"] if r["straggler_model"] == model):
            ratio = ratios.get(model, {}).get(run["method"], {})
            lines.append(
                f"| {model} | {run['method']} | {_fmt(run['time_per_iteration'])}"
                f"{_spread(run, 'time_per_iteration')} | "
                f"{_fmt(ratio.get('time_per_iteration_vs_coded'))} | "
                f"{'-' if run['rounds_to_gap'] is None else run['rounds_to_gap']} | "
                f"{_fmt(run['time_to_gap'])}{_spread(run, 'time_to_gap')} | "
                f"{_fmt(ratio.get('time_to_gap_vs_coded'))} | "
                f"{_fmt(run['time_to_gap_with_setup'])} | "
                f"{_fmt(run['cpu_seconds_per_iteration'])} "
                f"({_fmt(run['late_cpu_seconds_per_iteration'])}) | "
                f"{run['bytes_sent_per_iteration'] / 1e6:.1f} MB / "
                f"{run['bytes_received_per_iteration'] / 1e6:.1f} MB |"
            )
        s_run = svd_by.get(model)
        if s_run is not None:
            ratio = ratios.get(model, {}).get("svd_compressed", {})
            lines.append(
                f"| {model} | svd_compressed (q = {s_run['n_power_iter']}) | - | - | - | "
                f"{_fmt(s_run['seconds'])}{_spread_of(s_run['seconds_repeats'])} "
                f"(gap {s_run['gap']:.1e}) | "
                f"{_fmt(ratio.get('time_to_gap_vs_coded'))} | - | - | "
                f"R once / {s_run['bytes_received'] / 1e6:.1f} MB |"
            )
    lines += [
        "",
        "## svd_compressed: accuracy against n_power_iter (no stragglers)",
        "",
        "| n_power_iter | seconds | gap |",
        "|---|---|---|",
    ]
    for r in svd["search"]:
        lines.append(f"| {r['n_power_iter']} | {_fmt(r['seconds'])} | {r['gap']:.2e} |")
    lines += [
        "",
        "## Targets (ratios of this run)",
        "",
        "coded = the default, one exchange per iteration; coded-paper = the paper's protocol "
        "(three exchanges per iteration); both give the same iterates. Worker CPU: thread CPU "
        "seconds of every task of an iteration, the stopped late ones included.",
        "",
    ]
    lines += _headlines(result)
    lines += [
        "",
        "![time per iteration](bench_iteration.png)",
        "",
        "![convergence](bench_convergence.png)",
        "",
    ]
    path.write_text("\n".join(lines))


def _spread_of(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return ""
    return f" ({_fmt(min(values))}-{_fmt(max(values))})"


def _spread(run: dict, key: str) -> str:
    return _spread_of([r[key] for r in run.get("repeats", [])])


def _headlines(result: dict) -> list[str]:
    """The benchmark's targets, each a ratio of two figures of this run, with the paper
    protocol's figure beside the fast one's."""
    runs = {(r["straggler_model"], r["method"]): r for r in result["runs"]}
    svd = {r["straggler_model"]: r for r in result["svd_compressed"]["runs"]}
    out = []

    def per_iteration(model: str, method: str) -> float | None:
        run = runs.get((model, method))
        return None if run is None else run["time_per_iteration"]

    def to_gap(model: str, method: str) -> float | None:
        run = runs.get((model, method))
        return None if run is None else run["time_to_gap"]

    def line(text: str, target: str, fast: float | None, paper: float | None, bound: float):
        met = "-" if fast is None else ("met" if fast <= bound else "**missed**")
        out.append(f"| {text} | {target} | {_fmt(fast)} | {_fmt(paper)} | {met} |")

    out += [
        "| ratio | target | coded (fast) | coded (paper) | target |",
        "|---|---|---|---|---|",
    ]
    for model, bound in (("fixed", 0.25), ("shifted-exponential", 1.0)):
        for other, ceiling in (("uncoded", bound), ("replication", 1.0)):
            if model == "shifted-exponential" and other == "replication":
                continue
            line(
                f"coded / {other}, s per iteration, {model} stragglers",
                f"<= {ceiling:g}",
                _ratio(per_iteration(model, "coded"), per_iteration(model, other)),
                _ratio(per_iteration(model, "coded-paper"), per_iteration(model, other)),
                ceiling,
            )
    line(
        "coded / replication, s per iteration, random stragglers",
        "<= 1",
        _ratio(per_iteration("random", "coded"), per_iteration("random", "replication")),
        _ratio(per_iteration("random", "coded-paper"), per_iteration("random", "replication")),
        1.0,
    )
    line(
        "coded with fixed stragglers / coded without, s per iteration",
        "<= 1.2",
        _ratio(per_iteration("fixed", "coded"), per_iteration("none", "coded")),
        _ratio(per_iteration("fixed", "coded-paper"), per_iteration("none", "coded-paper")),
        1.2,
    )
    svd_fixed = svd.get("fixed", {}).get("seconds")
    line(
        "coded / svd_compressed, time to the target gap, fixed stragglers",
        "<= 0.5",
        _ratio(to_gap("fixed", "coded"), svd_fixed),
        _ratio(to_gap("fixed", "coded-paper"), svd_fixed),
        0.5,
    )
    return out


def _plot_bench_iteration(path: Path, result: dict) -> None:
    plt = _pyplot()
    models = list(result["config"]["straggler_models"])
    runs = {(r["straggler_model"], r["method"]): r for r in result["runs"]}
    width = 0.8 / len(METHODS)
    x = np.arange(len(models))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, method in enumerate(METHODS):
        values, low, high = [], [], []
        for m in models:
            run = runs.get((m, method))
            value = run["time_per_iteration"] if run else np.nan
            spread = [r["time_per_iteration"] for r in (run or {}).get("repeats", [])] or [value]
            values.append(value)
            low.append(value - min(spread))
            high.append(max(spread) - value)
        ax.bar(
            x + (i - (len(METHODS) - 1) / 2) * width,
            values,
            width,
            yerr=[low, high],
            capsize=3,
            label=method,
        )
    ax.set_xticks(x, models)
    ax.set_ylabel("median seconds per iteration (bars: min-max of repeats)")
    cfg = result["config"]
    ax.set_title(
        f"W = {cfg['n_workers']}, h = {cfg['h']}, s = {cfg['n_stragglers']}, "
        f"delay {cfg['straggler_delay']:g} s, m = {cfg['m']}, n = {cfg['n']}, d = {cfg['d']}"
    )
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_bench_convergence(path: Path, result: dict) -> None:
    plt = _pyplot()
    models = list(result["config"]["straggler_models"])
    target = result["config"]["target_gap"]
    floor = 1e-16
    n_cols = 2
    n_rows = -(-len(models) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(11, 4 * n_rows), squeeze=False)
    for ax, model in zip(axes.flat, models, strict=False):
        for run in (r for r in result["runs"] if r["straggler_model"] == model):
            t = np.cumsum(run["round_times"])
            gap = np.maximum(np.asarray(run["gaps"], dtype=float), floor)
            ax.plot(t, gap, "o-", ms=3, label=run["method"])
        svd = [r for r in result["svd_compressed"]["runs"] if r["straggler_model"] == model]
        if model == "none":
            svd = result["svd_compressed"]["search"][:-1] + svd
        if svd:
            ax.plot(
                [r["seconds"] for r in svd],
                [max(r["gap"], floor) for r in svd],
                "k*",
                ms=9,
                label="svd_compressed"
                + (" (q = 0, 1, ...)" if len(svd) > 1 else f" (q = {svd[0]['n_power_iter']})"),
            )
        ax.axhline(target, color="grey", ls="--", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("wall time (s)")
        ax.set_ylabel("relative objective gap")
        ax.set_title(f"stragglers: {model}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(models) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
