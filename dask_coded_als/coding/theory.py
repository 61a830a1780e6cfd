"""Recovery thresholds, redundancy and an expected-time model for choosing h.

Coded ALS splits the l x l matrix D into h x h blocks. One iteration runs four coded
multiplications (E = D B, F = B^T B, B^T E and E G) whose recovery thresholds are h^2 + h - 1,
2h - 1, 2h - 1 and h, so the iteration as a whole needs K(h) = h^2 + h - 1 responses (Lemma 2)
and tolerates s stragglers on W workers iff K(h) + s <= W.

This module holds the closed-form side of the method:

* :func:`recovery_threshold`, :func:`best_h`: the largest tolerable h, in exact integer
  arithmetic. The paper's closed form ``floor(sqrt(W + 3/4 - s))`` (Remark 3) is wrong for 37 of
  the 100 values W - s = 1..100; it is kept as :func:`paper_h_star` for comparison only.
* :func:`redundancy`, :func:`threshold_from_redundancy`: Theorem 1, mu = W / h^2 and
  K = W/mu + sqrt(W/mu) - 1.
* :func:`expected_order_statistic`: Royston's approximation of normal order statistics.
* :func:`expected_stage_times`, :func:`expected_iteration_time`, :func:`choose_h`: the expected
  time model of the paper's Appendix A, with the standard deviation of a worker's time corrected
  to sqrt(N) op_std for a task of N unit operations (eq. 46 writes sqrt(d n)/h for stage 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import norm

from dask_coded_als._util import check_int
from dask_coded_als.coding.points import choose_points

__all__ = [
    "ROYSTON_ALPHA",
    "ClusterRates",
    "ExchangeTime",
    "StageTime",
    "best_h",
    "choose_h",
    "choose_partition",
    "expected_exchange_time",
    "feasible_partitions",
    "partition_threshold",
    "expected_iteration_time",
    "expected_order_statistic",
    "expected_stage_times",
    "paper_h_star",
    "recovery_threshold",
    "redundancy",
    "threshold_from_redundancy",
]

#: Blom's constant, the value of alpha the paper uses in Royston's approximation (eq. 44).
ROYSTON_ALPHA = 0.375


def _as_float(value: object, name: str, *, positive: bool) -> float:
    """Return ``value`` as a finite float that is > 0 (``positive``) or >= 0."""
    try:
        as_float = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(as_float) or as_float < 0 or (positive and as_float == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return as_float


def _non_stragglers(n_workers: int, n_stragglers: int) -> int:
    """Validate (W, s) and return W - s, which must leave at least one responding worker."""
    n_workers = check_int(n_workers, "n_workers", 1)
    n_stragglers = check_int(n_stragglers, "n_stragglers", 0)
    if n_workers - n_stragglers < 1:
        raise ValueError(
            f"no h can tolerate {n_stragglers} stragglers on {n_workers} workers: "
            "at least one worker must respond (need n_workers - n_stragglers >= 1)"
        )
    return n_workers - n_stragglers


def recovery_threshold(h: int) -> int:
    """Return the recovery threshold K = h^2 + h - 1 of one coded ALS iteration (Lemma 2).

    K is the largest threshold of the iteration's four coded multiplications (stage 1,
    E = D B); any K responses decode every stage.

    Parameters
    ----------
    h : int
        Number of block rows (and block columns) D is split into; h >= 1.

    Returns
    -------
    int
        h^2 + h - 1.

    Raises
    ------
    ValueError
        If ``h`` is not an integer >= 1.

    Examples
    --------
    >>> [recovery_threshold(h) for h in range(1, 7)]
    [1, 5, 11, 19, 29, 41]
    """
    h = check_int(h, "h", 1)
    return h * h + h - 1


def best_h(n_workers: int, n_stragglers: int) -> int:
    """Return the largest h whose iteration tolerates ``n_stragglers`` stragglers (Remark 3).

    This is the largest h >= 1 with h^2 + h - 1 + s <= W. With k = W - s,
    h^2 + h - 1 <= k is equivalent to (2h + 1)^2 <= 4k + 5, so
    h = (isqrt(4k + 5) - 1) // 2 = floor(sqrt(k + 5/4) - 1/2), computed here with integers only.

    Parameters
    ----------
    n_workers : int
        Number of workers W >= 1.
    n_stragglers : int
        Number of stragglers s >= 0 to tolerate.

    Returns
    -------
    int
        The largest feasible h (at least 1).

    Raises
    ------
    ValueError
        If an argument is negative or not an integer, or if W - s < 1 (then no h is feasible).

    See Also
    --------
    paper_h_star : the paper's (incorrect) closed form, kept for comparison.
    choose_h : the feasible h with the least modelled iteration time.

    Examples
    --------
    >>> best_h(30, 2)  # K(4) = 19 <= 28 < K(5) = 29
    4
    >>> best_h(12, 2)  # K(3) = 11 > 10
    2
    """
    k = _non_stragglers(n_workers, n_stragglers)
    return (math.isqrt(4 * k + 5) - 1) // 2


def paper_h_star(n_workers: int, n_stragglers: int) -> int:
    """Return the paper's h* = floor(sqrt(W + 3/4 - s)) (Remark 3). Erratum: do not use.

    The formula is wrong for 37 of the 100 values W - s = 1..100: for W - s = 10 it gives 3,
    but K(3) = 11 > 10, so h = 3 cannot tolerate the stragglers (the paper's own Table I has no
    h = 3 entry at k = 10). It is kept only to document and test the erratum; use
    :func:`best_h`.

    Parameters
    ----------
    n_workers : int
        Number of workers W >= 1.
    n_stragglers : int
        Number of stragglers s >= 0, with W - s >= 1.

    Returns
    -------
    int
        floor(sqrt(W - s + 3/4)), computed exactly as isqrt(4 (W - s) + 3) // 2.

    Raises
    ------
    ValueError
        On the same inputs as :func:`best_h`.

    Examples
    --------
    >>> paper_h_star(12, 2), best_h(12, 2)
    (3, 2)
    """
    k = _non_stragglers(n_workers, n_stragglers)
    # floor(sqrt(x) / 2) == floor(isqrt(x) / 2), so this is the formula without rounding error.
    return math.isqrt(4 * k + 3) // 2


def redundancy(n_workers: int, h: int) -> float:
    """Return the coding redundancy mu = W / h^2 (Theorem 1, eq. 33).

    Each worker stores one coded block of size (l/h)^2, so the W workers together store mu
    copies of D. Decoding needs mu >= 1, and any feasible h (K(h) <= W) has mu > 1 except h = 1
    on one worker.

    Parameters
    ----------
    n_workers : int
        Number of workers W >= 1.
    h : int
        Number of block rows of D, h >= 1.

    Returns
    -------
    float
        W / h^2.

    Examples
    --------
    >>> redundancy(50, 5)
    2.0
    """
    n_workers = check_int(n_workers, "n_workers", 1)
    h = check_int(h, "h", 1)
    return n_workers / (h * h)


def threshold_from_redundancy(n_workers: int, mu: float) -> float:
    """Return the recovery threshold K = W/mu + sqrt(W/mu) - 1 as a function of mu (Theorem 1).

    With mu = W / h^2 this equals :func:`recovery_threshold` (h), since W/mu = h^2.

    Parameters
    ----------
    n_workers : int
        Number of workers W >= 1.
    mu : float
        Coding redundancy, > 0.

    Returns
    -------
    float
        W/mu + sqrt(W/mu) - 1.

    Examples
    --------
    >>> threshold_from_redundancy(50, 2.0)
    29.0
    >>> threshold_from_redundancy(50, redundancy(50, 5)) == recovery_threshold(5)
    True
    """
    n_workers = check_int(n_workers, "n_workers", 1)
    mu = _as_float(mu, "mu", positive=True)
    h_squared = n_workers / mu
    return h_squared + math.sqrt(h_squared) - 1


def expected_order_statistic(
    r: int, n: int, mean: float = 0.0, std: float = 1.0, alpha: float = ROYSTON_ALPHA
) -> float:
    """Approximate the expected r-th smallest of n iid normal variables (Royston, eq. 44).

    E(r:n) ~ mean + Phi^-1((r - alpha) / (n - 2 alpha + 1)) std, with Phi the standard normal
    CDF. With alpha = 0.375 (Blom) the absolute error is at most about 0.025 std for n <= 100,
    largest at n = 2.

    Parameters
    ----------
    r : int
        Rank, 1 <= r <= n (r = 1 is the minimum).
    n : int
        Sample size, n >= 1.
    mean, std : float
        Mean and standard deviation (>= 0) of each variable.
    alpha : float
        Plotting-position constant, 0 <= alpha < 1.

    Returns
    -------
    float
        The approximate expectation.

    Raises
    ------
    ValueError
        Unless 1 <= r <= n, std >= 0 and 0 <= alpha < 1.

    Examples
    --------
    >>> expected_order_statistic(1, 1, mean=3.0, std=2.0)
    3.0
    >>> round(expected_order_statistic(2, 2), 4)  # exact value: 1/sqrt(pi) = 0.5642
    0.5895
    """
    n = check_int(n, "n", 1)
    r = check_int(r, "r", 1)
    if r > n:
        raise ValueError(f"rank r must satisfy 1 <= r <= n, got r={r}, n={n}")
    try:
        mean = float(mean)
    except (TypeError, ValueError):
        raise ValueError(f"mean must be a real number, got {mean!r}") from None
    if not math.isfinite(mean):
        raise ValueError(f"mean must be finite, got {mean!r}")
    std = _as_float(std, "std", positive=False)
    alpha = _as_float(alpha, "alpha", positive=False)
    if alpha >= 1:
        raise ValueError(f"alpha must satisfy 0 <= alpha < 1, got {alpha}")
    quantile = float(norm.ppf((r - alpha) / (n - 2 * alpha + 1)))
    return mean + quantile * std


@dataclass(frozen=True)
class StageTime:
    """Modelled time of one stage of a coded ALS iteration.

    Attributes
    ----------
    stage : int
        Stage number, 1 to 4 (E = D B, F = B^T B, B^T E, E G).
    n_ops : float
        Unit operations in one worker's task, N.
    threshold : int
        Responses the master waits for, K_stage.
    worker_mean : float
        Mean of one worker's time, N op_mean.
    worker_std : float
        Standard deviation of one worker's time, sqrt(N) op_std.
    expected : float
        Expected time until the threshold-th fastest of the non-stragglers answers.
    """

    stage: int
    n_ops: float
    threshold: int
    worker_mean: float
    worker_std: float
    expected: float


def expected_stage_times(
    h: int,
    n_workers: int,
    n_stragglers: int,
    size: int,
    n_factors: int,
    op_mean: float,
    op_std: float,
) -> dict[int, StageTime]:
    """Model the expected time of each stage of one iteration (Appendix A).

    A worker's task of N unit operations, each ~ N(op_mean, op_std^2), takes a time
    ~ N(N op_mean, N op_std^2). The s stragglers never answer in time, so a stage ends when the
    K_stage-th fastest of the W - s others answers; its expectation is approximated with
    :func:`expected_order_statistic`. With l = ``size`` and d = ``n_factors``:

    ===== ================ ============
    stage N                K_stage
    ===== ================ ============
    1     l^2 d / h^2      h^2 + h - 1
    2, 3  l d^2 / h        2h - 1
    4     (l / h) d^2      h
    ===== ================ ============

    The standard deviation of stage 1 is therefore (l sqrt(d) / h) op_std; the paper's eq. 46
    writes sqrt(d l) / h, which does not follow from its own eq. 41.

    Parameters
    ----------
    h : int
        Number of block rows of D, h >= 1.
    n_workers : int
        Number of workers W.
    n_stragglers : int
        Number of stragglers s; h must tolerate them: h^2 + h - 1 + s <= W.
    size : int
        Side l of the l x l matrix D (l = min(m, n) for an m x n rating matrix).
    n_factors : int
        Latent dimension d.
    op_mean : float
        Mean time of one unit operation, > 0.
    op_std : float
        Standard deviation of one unit operation, >= 0.

    Returns
    -------
    dict of int to StageTime
        Keys 1 to 4.

    Raises
    ------
    ValueError
        If an argument is invalid or h cannot tolerate s stragglers on W workers.

    Examples
    --------
    >>> stages = expected_stage_times(2, 10, 0, size=100, n_factors=4, op_mean=1.0, op_std=0.0)
    >>> [(s.n_ops, s.threshold) for s in stages.values()]
    [(10000.0, 5), (800.0, 3), (800.0, 3), (800.0, 2)]
    """
    h = check_int(h, "h", 1)
    k = _non_stragglers(n_workers, n_stragglers)
    if recovery_threshold(h) > k:
        raise ValueError(
            f"h={h} needs {recovery_threshold(h)} responses but only {k} of {n_workers} workers "
            f"respond with {n_stragglers} stragglers; use h <= best_h(n_workers, n_stragglers)"
        )
    size = check_int(size, "size", 1)
    n_factors = check_int(n_factors, "n_factors", 1)
    op_mean = _as_float(op_mean, "op_mean", positive=True)
    op_std = _as_float(op_std, "op_std", positive=False)

    # Stage 4 multiplies an (l/h) x d block by d x d: the same count as stages 2 and 3,
    # but only h responses are needed.
    plan = (
        (1, size * size * n_factors / (h * h), recovery_threshold(h)),
        (2, size * n_factors * n_factors / h, 2 * h - 1),
        (3, size * n_factors * n_factors / h, 2 * h - 1),
        (4, size / h * n_factors * n_factors, h),
    )
    stages = {}
    for stage, n_ops, threshold in plan:
        worker_mean = n_ops * op_mean
        worker_std = math.sqrt(n_ops) * op_std
        expected = expected_order_statistic(threshold, k, worker_mean, worker_std)
        stages[stage] = StageTime(stage, n_ops, threshold, worker_mean, worker_std, expected)
    return stages


def expected_iteration_time(
    h: int,
    n_workers: int,
    n_stragglers: int,
    size: int,
    n_factors: int,
    op_mean: float,
    op_std: float,
) -> float:
    """Return the modelled expected time of one iteration: the sum of its four stages.

    Parameters
    ----------
    h, n_workers, n_stragglers, size, n_factors, op_mean, op_std
        As in :func:`expected_stage_times`.

    Returns
    -------
    float
        Sum of the four stages' expected times (eq. 37-39).

    Raises
    ------
    ValueError
        As :func:`expected_stage_times`.

    Examples
    --------
    >>> expected_iteration_time(2, 10, 0, size=100, n_factors=4, op_mean=1.0, op_std=0.0)
    12400.0
    """
    stages = expected_stage_times(h, n_workers, n_stragglers, size, n_factors, op_mean, op_std)
    return math.fsum(stage.expected for stage in stages.values())


def choose_h(
    n_workers: int,
    n_stragglers: int,
    size: int,
    n_factors: int,
    op_mean: float,
    op_std: float,
) -> int:
    """Return the feasible h with the least modelled iteration time (Remarks 3-4).

    A larger h gives each worker less work but makes the master wait for a later order
    statistic (K(h) of W - s). When op_mean sqrt(N) / op_std is large the first effect wins and
    the result is :func:`best_h`; when worker times are very spread out a smaller h can be faster.
    Every h in 1..best_h is evaluated; ties go to the larger h (less storage per worker).

    Parameters
    ----------
    n_workers, n_stragglers, size, n_factors, op_mean, op_std
        As in :func:`expected_stage_times`.

    Returns
    -------
    int
        The h in 1..best_h(n_workers, n_stragglers) minimizing :func:`expected_iteration_time`.

    Raises
    ------
    ValueError
        As :func:`best_h` and :func:`expected_stage_times`.

    Examples
    --------
    >>> choose_h(50, 0, size=1500, n_factors=200, op_mean=1.0, op_std=0.1)
    6
    """
    h_max = best_h(n_workers, n_stragglers)
    times = {
        h: expected_iteration_time(h, n_workers, n_stragglers, size, n_factors, op_mean, op_std)
        for h in range(1, h_max + 1)
    }
    return min(times, key=lambda h: (times[h], -h))


# ---- the code family: choosing the partition (p, r) ---------------------------------------------


def partition_threshold(p: int, r: int) -> int:
    """Recovery threshold ``p r + r - 1`` of E = D B with D's output rows split p ways and its
    contraction (and B) r ways; ``(h, h)`` gives :func:`recovery_threshold`.

    Examples
    --------
    >>> partition_threshold(3, 3), partition_threshold(11, 1), partition_threshold(5, 2)
    (11, 11, 11)
    """
    p = check_int(p, "p", 1)
    r = check_int(r, "r", 1)
    return p * r + r - 1


def feasible_partitions(n_workers: int, n_stragglers: int) -> list[tuple[int, int]]:
    """Every (p, r) whose threshold tolerates ``n_stragglers`` of ``n_workers``, by r then p.

    Examples
    --------
    >>> [pr for pr in feasible_partitions(13, 2) if pr[0] * pr[1] >= 9]
    [(9, 1), (10, 1), (11, 1), (5, 2), (3, 3)]
    """
    k = _non_stragglers(n_workers, n_stragglers)
    return [
        (p, r)
        for r in range(1, (k + 1) // 2 + 1)
        for p in range(1, k + 1)
        if partition_threshold(p, r) <= k
    ]


@dataclass(frozen=True)
class ClusterRates:
    """What the partition model needs to know about a cluster.

    Attributes
    ----------
    op_mean, op_std : float
        Mean and standard deviation of the time of one multiply-add of a worker's product (a
        task of N of them takes N op_mean on average, with standard deviation sqrt(N) op_std,
        as in Appendix A).
    bandwidth : float
        Bytes per second between the master and the workers, shared by all of them.
    latency : float
        Seconds of one exchange that moves and computes nothing (messages, scheduling).
    concurrency : float or None
        How many tasks the workers run at once (the cores they share); None: one core each.
    """

    op_mean: float
    op_std: float
    bandwidth: float
    latency: float
    concurrency: float | None = None


@dataclass(frozen=True)
class ExchangeTime:
    """Modelled seconds of one iteration's exchange for a partition, by part."""

    partition: tuple[int, int]
    threshold: int
    upload: float
    compute: float
    download: float
    decode: float
    latency: float

    @property
    def total(self) -> float:
        return self.latency + self.upload + self.compute + self.download + self.decode


def _arithmetic_factor(r: int, circle: bool) -> float:
    # On the circle a product of two paired operands is three real GEMMs of half the inner
    # dimension (1.5x); with r = 1 the output blocks are paired instead and B stays real (1x).
    return 1.5 if circle and r > 1 else 1.0


def expected_exchange_time(
    partition: tuple[int, int],
    n_workers: int,
    n_stragglers: int,
    size: int,
    n_factors: int,
    rates: ClusterRates,
    circle: bool = True,
    value_bytes: int = 8,
) -> ExchangeTime:
    """Model the time of one iteration of the fast protocol for a partition (p, r).

    With l = ``size``, d = ``n_factors``, K = p r + r - 1 and values of ``value_bytes`` (8:
    float64, 4: float32, whose ``rates`` are measured in float32):

    - upload: the master sends every one of the W workers its operand of (l / r) d values
      over its link, W (l / r) d 8 / bandwidth;
    - compute: a worker's product is N = a l^2 d / (p r) multiply-adds (a = 1.5 for paired
      complex operands, 1 for real ones or r = 1 on the circle); the exchange waits for the K-th
      fastest of the W - s non-stragglers (Royston's approximation, as in Appendix A) or, when
      the workers share fewer cores than there are tasks, for all tasks to share them
      (W N op_mean / concurrency, when that is larger);
    - download: K answers of (l / p) d values (twice that for paired complex operands);
    - decode: about 2 K l d multiply-adds at the master (at op_mean);
    - latency: one exchange's fixed cost.

    Parameters
    ----------
    partition : (int, int)
        (p, r).
    n_workers, n_stragglers : int
        W and s; the partition must tolerate s.
    size, n_factors : int
        l and d.
    rates : ClusterRates
    circle : bool
        Points on the unit circle (the default code) or real points.

    Returns
    -------
    ExchangeTime

    Examples
    --------
    >>> rates = ClusterRates(op_mean=1e-9, op_std=0.0, bandwidth=1e9, latency=0.01)
    >>> t = expected_exchange_time((3, 3), 13, 2, 1500, 200, rates)
    >>> round(t.upload, 4), round(t.compute, 4)
    (0.0104, 0.075)
    """
    p, r = (check_int(x, name, 1) for x, name in zip(partition, ("p", "r"), strict=True))
    k = _non_stragglers(n_workers, n_stragglers)
    threshold = partition_threshold(p, r)
    if threshold > k:
        raise ValueError(
            f"partition ({p}, {r}) needs {threshold} answers but only {k} of {n_workers} workers "
            f"answer with {n_stragglers} stragglers"
        )
    size = check_int(size, "size", 1)
    d = check_int(n_factors, "n_factors", 1)
    n_ops = _arithmetic_factor(r, circle) * size * size * d / (p * r)
    compute = expected_order_statistic(
        threshold, k, n_ops * rates.op_mean, math.sqrt(n_ops) * rates.op_std
    )
    if rates.concurrency is not None and rates.concurrency < n_workers:
        compute = max(compute, n_workers * n_ops * rates.op_mean / rates.concurrency)
    answer_values = size * d / p * (2 if circle and r > 1 else 1)
    return ExchangeTime(
        partition=(p, r),
        threshold=threshold,
        upload=n_workers * size * d / r * value_bytes / rates.bandwidth,
        compute=compute,
        download=threshold * answer_values * value_bytes / rates.bandwidth,
        decode=2 * threshold * size * d * rates.op_mean,
        latency=rates.latency,
    )


def choose_partition(
    n_workers: int,
    n_stragglers: int,
    size: int,
    n_factors: int,
    rates: ClusterRates,
    circle: bool | None = True,
    dtype: str = "float64",
) -> tuple[int, int]:
    """The feasible (p, r) with the least modelled iteration time (:func:`expected_exchange_time`).

    Compute-bound clusters (fast links, slow or shared cores) favour small r, which gives each
    worker the least work for a threshold; bandwidth-bound ones favour larger r, whose operands
    are smaller (the answers grow as 1/p, so the square split is not always the smallest
    exchange). Ties go to the smaller threshold. ``circle=None`` takes for each partition the
    points :func:`dask_coded_als.coding.points.choose_points` would (the engine's default) for
    results in ``dtype``, whose values the model moves (``rates`` measured in it).

    Examples
    --------
    >>> compute_bound = ClusterRates(op_mean=1e-9, op_std=0.0, bandwidth=1e10, latency=0.01)
    >>> choose_partition(13, 2, 1500, 200, compute_bound)
    (11, 1)
    >>> slow_link = ClusterRates(op_mean=1e-11, op_std=0.0, bandwidth=1e7, latency=0.01)
    >>> choose_partition(13, 2, 1500, 200, slow_link)
    (5, 2)
    """

    def on_circle(p: int, r: int) -> bool:
        if circle is not None:
            return circle
        return choose_points(n_workers, partition_threshold(p, r), r, dtype) == "circle"

    value_bytes = 4 if dtype == "float32" else 8
    times = {
        (p, r): expected_exchange_time(
            (p, r), n_workers, n_stragglers, size, n_factors, rates, on_circle(p, r), value_bytes
        )
        for p, r in feasible_partitions(n_workers, n_stragglers)
    }
    return min(times, key=lambda pr: (times[pr].total, times[pr].threshold))
