"""Evaluation points of the polynomial codes and the conditioning of decoding from them.

Decoding a polynomial code means solving a Vandermonde system built from the evaluation points of
the workers that answered. Two families of points are provided:

``"circle"`` (the default)
    The W-th roots of unity. Square Vandermonde matrices on the unit circle are well conditioned:
    the worst case grows polynomially in W for a fixed number of missing points, so decoding stays
    accurate in float64 for every straggler pattern the codes are used with.
``"real"``
    The paper's real-valued points, here Chebyshev nodes of the first kind on [-1, 1] (the best
    real choice). The condition number grows exponentially in the recovery threshold, so decoding
    fails in float64 from about K = 30 on. Kept for fidelity to the paper and for comparison.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "REAL_CONDITION_LIMIT",
    "REAL_DECODE_ERROR_LIMIT",
    "choose_points",
    "evaluation_points",
    "vandermonde",
    "condition_number",
    "worst_case_condition_number",
    "POINT_FAMILIES",
]

POINT_FAMILIES = ("circle", "real")

#: Above this many K-subsets the worst case is estimated (contiguous + random runs).
EXHAUSTIVE_LIMIT = 5000
#: The engine's default takes real points where their worst-case condition number is at most
#: this in float64: a decoding error below about 2e-11 (condition number x machine epsilon).
REAL_CONDITION_LIMIT = 1e5
#: The same bound as a decoding error, for results of any precision.
REAL_DECODE_ERROR_LIMIT = REAL_CONDITION_LIMIT * float(np.finfo(np.float64).eps)


def evaluation_points(n_workers: int, points: str | Sequence[complex] | None = None) -> np.ndarray:
    """Return the evaluation point of every worker.

    Parameters
    ----------
    n_workers : int
        Number of workers W (one point each).
    points : {"circle", "real"}, array-like or None
        ``None`` or ``"circle"``: the W-th roots of unity (complex128). ``"real"``: W Chebyshev
        nodes on [-1, 1] (float64). An array gives the points explicitly: real values must be
        distinct; complex values must be distinct and lie on the unit circle.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_workers,)``, float64 for real points, complex128 for points on the circle.

    Examples
    --------
    >>> evaluation_points(4).round(12)
    array([ 1.+0.j,  0.+1.j, -1.+0.j, -0.-1.j])
    >>> evaluation_points(3, "real").round(4)
    array([ 0.866,  0.   , -0.866])
    """
    if not isinstance(n_workers, (int, np.integer)) or n_workers < 1:
        raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
    if points is None or (isinstance(points, str) and points == "circle"):
        return np.exp(2j * np.pi * np.arange(n_workers) / n_workers)
    if isinstance(points, str):
        if points == "real":
            k = np.arange(n_workers)
            return np.cos((2 * k + 1) * np.pi / (2 * n_workers))
        raise ValueError(f"points must be one of {POINT_FAMILIES} or an array, got {points!r}")
    arr = np.asarray(points)
    if arr.shape != (n_workers,):
        raise ValueError(f"expected {n_workers} evaluation points, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("evaluation points must be finite")
    if np.iscomplexobj(arr) and np.any(arr.imag != 0):
        arr = arr.astype(np.complex128)
        if not np.allclose(np.abs(arr), 1.0, rtol=0, atol=1e-12):
            raise ValueError("complex evaluation points must lie on the unit circle")
    else:
        arr = arr.real.astype(np.float64)
    if len(np.unique(arr.round(14))) != n_workers:
        raise ValueError("evaluation points must be distinct")
    return arr


def vandermonde(points: np.ndarray, exponents: Iterable[int]) -> np.ndarray:
    """Matrix ``M[w, e] = points[w] ** exponents[e]`` (negative exponents allowed on the circle)."""
    points = np.asarray(points)
    exponents = np.asarray(list(exponents))
    return points[:, None] ** exponents[None, :]


def condition_number(points: np.ndarray, n_coefficients: int) -> float:
    """2-norm condition number of decoding ``n_coefficients`` coefficients from ``points``.

    ``len(points) >= n_coefficients``; with more points than coefficients it is the condition
    number of the least-squares problem.
    """
    return float(np.linalg.cond(vandermonde(np.asarray(points), range(n_coefficients))))


def _candidate_subsets(
    n_workers: int, threshold: int, n_random: int, rng: np.random.Generator
) -> Iterable[tuple[int, ...]]:
    if math.comb(n_workers, threshold) <= EXHAUSTIVE_LIMIT:
        yield from itertools.combinations(range(n_workers), threshold)
        return
    # Contiguous (cyclic) runs of answering workers: for points on the circle the worst pattern is
    # the stragglers sitting next to each other; for real points the run at either end.
    for start in range(n_workers):
        yield tuple(sorted((start + i) % n_workers for i in range(threshold)))
    for _ in range(n_random):
        yield tuple(sorted(rng.choice(n_workers, threshold, replace=False)))


def worst_case_condition_number(
    n_workers: int,
    recovery_threshold: int,
    points: str | Sequence[complex] | None = None,
    n_random: int = 200,
    seed: int = 0,
) -> float:
    """Worst condition number of decoding from any ``recovery_threshold`` of ``n_workers`` points.

    Exhaustive over all subsets when there are at most 5000 of them; otherwise the maximum over
    every cyclic run of consecutive points and ``n_random`` random subsets (a lower bound on the
    true worst case, which for roots of unity is attained by a contiguous run).

    Parameters
    ----------
    n_workers, recovery_threshold : int
        W and K, with ``1 <= K <= W``.
    points : {"circle", "real"}, array-like or None
        As in :func:`evaluation_points`.

    Examples
    --------
    >>> worst_case_condition_number(18, 15) < 200
    True
    >>> worst_case_condition_number(18, 15, "real") > 1e5
    True
    """
    if not 1 <= recovery_threshold <= n_workers:
        raise ValueError(
            f"recovery_threshold must be between 1 and n_workers={n_workers}, "
            f"got {recovery_threshold}"
        )
    xs = evaluation_points(n_workers, points)
    full = vandermonde(xs, range(recovery_threshold))
    rng = np.random.default_rng(seed)
    worst = 0.0
    for subset in _candidate_subsets(n_workers, recovery_threshold, n_random, rng):
        worst = max(worst, float(np.linalg.cond(full[list(subset)])))
    return worst


@functools.lru_cache(maxsize=256)
def choose_points(n_workers: int, recovery_threshold: int, r: int, dtype: str = "float64") -> str:
    """The cheaper family of points that decodes accurately from any ``recovery_threshold`` of
    ``n_workers`` workers, for a code that splits the contraction ``r`` ways, from results in
    ``dtype``.

    Real points need 1x the multiply-adds per worker where the circle's paired operands need
    1.5x (r > 1), so they are taken wherever their worst-case decoding error (condition number
    x the results' epsilon) is at most :data:`REAL_DECODE_ERROR_LIMIT`: in float64 a condition
    number up to :data:`REAL_CONDITION_LIMIT` (few workers and spares: W = 13, K = 11 gives
    1.7e4), in float32 none (its epsilon alone is 6e-8). The circle otherwise, and always for
    r = 1, whose circle code pairs output blocks at 1x cost.

    Examples
    --------
    >>> choose_points(13, 11, 3), choose_points(16, 11, 3), choose_points(13, 11, 1)
    ('real', 'circle', 'circle')
    >>> choose_points(13, 11, 3, "float32")
    'circle'
    """
    if r == 1:
        return "circle"
    worst = worst_case_condition_number(n_workers, recovery_threshold, "real")
    error = worst * float(np.finfo(dtype).eps)
    return "real" if error <= REAL_DECODE_ERROR_LIMIT else "circle"
