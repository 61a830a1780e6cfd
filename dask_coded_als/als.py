"""In-memory reference alternating least squares (ALS), the oracle for the distributed engine.

Given R (m x n, dense or ``scipy.sparse``; a missing rating is 0) and a latent dimension d, ALS
minimizes

    f(U, V) = ||R - U V^T||_F^2 + lam (||U||_F^2 + ||V||_F^2)

(``lam = 0`` is the paper's problem (1); ``lam > 0`` is an optional ridge). Two equivalent methods
are provided:

``"classical"``
    Eqs. (2)-(3): update U from V, then V from U (:func:`classical_step`).
``"one-factor"``
    Lemma 1 / eq. (12): with l = min(m, n), ``D = R^T R`` and ``B = V`` if m >= n, else
    ``D = R R^T`` and ``B = U``. One iteration is ``E = D B``, ``F = B^T B``, ``S = B^T E``,
    ``G = update_matrix(F, S, lam)`` and ``B+ = E G``. Only the d x d matrix G is computed at the
    master; this is the form the coded engine distributes. The other factor is recovered at the
    end by :func:`factors_from_b` (eqs. 29-31, with the paper's swap of R and R^T corrected).

The master-side helpers (:func:`update_matrix`, :func:`objective_from_gram`,
:func:`objective_noise`, :func:`relative_objective_change`, :func:`factors_from_b`,
:func:`initial_factor`) are public so that the distributed engine performs exactly the same d x d
computations as this reference.

Convergence. The objective is tracked from d x d quantities (:func:`objective_from_gram`), which
carry an absolute rounding error of order ``eps * cond(B^T B) * ||R||_F^2``. Iterations stop when
the relative objective change is below ``tol``, where a change smaller than that error
(:func:`objective_noise`) counts as none; otherwise a small optimum (a nearly low-rank R) makes
the relative change pure noise and the iteration would run to ``max_iter``.

Rank deficiency. With ``lam = 0`` the update needs ``S = B^T D B`` to be nonsingular relative to
``F = B^T B``. The generalized eigenvalues mu of ``S v = mu F v`` are the Rayleigh quotients of D
on span(B). If R has rank below d, the smallest is zero up to rounding (measured: 1e-17 to 4e-16
of the largest), and G = S^-1 F would be noise. :func:`update_matrix` raises
:class:`RankDeficientError` when ``mu_min / mu_max < 1e3 * d * eps`` (eps = 2.2e-16, so 1.1e-12
for d = 5). At that ratio the solve for G amplifies rounding by 1 / (1e3 d eps), leaving G about
three correct digits, and the singular-value ratio sigma_d / sigma_1 of R is below
sqrt(1e3 d eps), about 5e-7 sqrt(d). Such a direction is barely resolved by D = R^T R in float64
anyway. The classical method applies the same threshold to ``(sigma_min / sigma_max)^2`` of R on
the span of the factor it fits to, computed from R Q with Q orthonormal, so both methods reject the
same inputs.

A ridge ``lam > 0`` makes the update well defined, but in the one-factor form only if lam is
above the rounding level of S: along a direction that B has lost, the update divides by lam^3
while S is known only to about eps ||S||. For ``lam < (1e3 d eps ||S||_2)^(1/3)``
:func:`update_matrix` applies the same rank test as for lam = 0 (without it, runs on a
rank-deficient R with such a lam returned objectives off by orders of magnitude, some negative).
The classical method forms ``U^T U`` from U itself and has no such limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.linalg
import scipy.sparse

from dask_coded_als.data.gram import gram
from dask_coded_als.errors import NonFiniteFactorsError, RankDeficientError

__all__ = [
    "ALSResult",
    "NonFiniteFactorsError",
    "RankDeficientError",
    "classical_step",
    "factors_from_b",
    "fit_als",
    "gram",
    "initial_factor",
    "objective_from_gram",
    "objective_noise",
    "one_factor_step",
    "relative_objective_change",
    "update_matrix",
]

_EPS = float(np.finfo(np.float64).eps)
_TINY = float(np.finfo(np.float64).tiny)

#: The rank test fails when mu_min / mu_max < RANK_RTOL_PER_FACTOR * d * eps (see module docs).
RANK_RTOL_PER_FACTOR = 1e3

#: objective_noise = OBJECTIVE_NOISE_FACTOR * eps * trace(D) * (OBJECTIVE_NOISE_OFFSET + kappa).
#: Measured over 360 random problems (dense and sparse, lam in {0, 1e-3, 1, 100}, up to
#: 700 x 700, d up to 40), |objective_from_gram - explicit objective| never exceeded
#: 0.76 eps trace(D) (8 + kappa), kappa = cond(F + lam I); the factor 2 leaves a margin.
OBJECTIVE_NOISE_FACTOR = 2.0
OBJECTIVE_NOISE_OFFSET = 8.0

Method = Literal["one-factor", "classical"]


# ---------------------------------------------------------------------------------------------
# Small private helpers


def _check_regularization(regularization: float) -> float:
    lam = float(regularization)
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"regularization must be a finite number >= 0, got {regularization!r}")
    return lam


def _check_finite(what: str, *arrays: np.ndarray) -> None:
    for a in arrays:
        if not np.all(np.isfinite(a)):
            raise NonFiniteFactorsError(f"{what} contains NaN or inf")


def _check_square(name: str, a: np.ndarray, d: int | None = None) -> None:
    if a.ndim != 2 or a.shape[0] != a.shape[1] or (d is not None and a.shape[0] != d):
        want = "square" if d is None else f"{d} x {d}"
        raise ValueError(f"{name} must be {want}, got shape {a.shape}")


def _sym(a: np.ndarray) -> np.ndarray:
    # F and S are symmetric by definition; a decoded S is only symmetric up to rounding, and the
    # symmetric solvers below read one triangle, so use the symmetric part.
    return 0.5 * (a + a.T)


def _shifted(f: np.ndarray, lam: float) -> np.ndarray:
    return f + lam * np.eye(f.shape[0]) if lam else f


def _rank_threshold(n_factors: int) -> float:
    return RANK_RTOL_PER_FACTOR * n_factors * _EPS


def _min_regularization(s: np.ndarray) -> float:
    """Smallest ridge that still regularizes the one-factor update numerically.

    Along a direction c with B c = 0 the update divides by lam^3 (``S + lam K^2`` has eigenvalue
    lam^3 there) while the rounding error of S is about eps ||S||. Below
    ``(1e3 d eps ||S||)^(1/3)`` the ridge is drowned by that error and the update is as
    singular as with lam = 0.
    """
    norm = float(np.max(np.abs(scipy.linalg.eigvalsh(s, check_finite=False))))
    return (_rank_threshold(s.shape[0]) * norm) ** (1.0 / 3.0)


def _check_rank(f: np.ndarray, s: np.ndarray, lam: float = 0.0) -> None:
    """Raise RankDeficientError unless S is safely nonsingular relative to F (both symmetric)."""
    d = f.shape[0]
    if lam == 0:
        hint = "lower n_factors or use regularization > 0"
    else:
        hint = (
            f"lower n_factors, use regularization >= about {_min_regularization(s):.3g} "
            f"(regularization={lam:g} is below the rounding level of S), or method='classical'"
        )
    message = f"R has numerical rank < n_factors={d}; {hint}"
    try:
        mu = scipy.linalg.eigh(s, f, eigvals_only=True, check_finite=False)
    except np.linalg.LinAlgError:
        # F = B^T B is not positive definite: the factor itself has lost rank.
        raise RankDeficientError(f"{message} (B^T B is singular)") from None
    ratio = mu[0] / mu[-1] if mu[-1] > 0 else -math.inf
    threshold = _rank_threshold(d)
    if not ratio >= threshold:
        raise RankDeficientError(
            f"{message} (smallest/largest generalized eigenvalue of S v = mu F v is "
            f"{ratio:.3g} < {threshold:.3g})"
        )


def _pos_solve(a: np.ndarray, b: np.ndarray, name: str, lam: float) -> np.ndarray:
    """Solve ``a x = b`` for symmetric positive definite ``a`` by Cholesky."""
    try:
        # cho_factor rather than solve(assume_a="pos"): with lam > 0 and rank(R) < d the systems
        # are legitimately ill conditioned along directions that E = D B annihilates, and solve()
        # would warn on every iteration.
        factor = scipy.linalg.cho_factor(a, check_finite=False)
    except np.linalg.LinAlgError:
        d = a.shape[0]
        hint = (
            "lower n_factors or use regularization > 0"
            if lam == 0
            else f"lower n_factors or use regularization larger than {lam:g}"
        )
        raise RankDeficientError(
            f"{name} is not numerically positive definite: R has numerical rank < "
            f"n_factors={d}; {hint}"
        ) from None
    return scipy.linalg.cho_solve(factor, b, check_finite=False)


def _half_step(r: Any, x: np.ndarray, lam: float) -> np.ndarray:
    """``R X (X^T X + lam I)^-1``: the least-squares (ridge) fit of the other factor.

    Solved by QR of ``[X; sqrt(lam) I] = Q T`` as ``(R Q_top) T^-T``, not by the normal
    equations: one of the two factors carries the spread of R's singular values, so its Gram
    matrix can have a condition number near 1/eps while the least-squares problem is fine.
    """
    _check_finite("a factor", x)
    d = x.shape[1]
    stacked = np.vstack([x, math.sqrt(lam) * np.eye(d)]) if lam else x
    q, t = scipy.linalg.qr(stacked, mode="economic", check_finite=False)
    y = np.asarray(r @ q[: x.shape[0]])
    _check_finite("a factor", y)
    if lam == 0:
        # Generalized eigenvalues of (X^T R^T R X, X^T X) are the squared singular values of R Q.
        sigma = scipy.linalg.svd(y, compute_uv=False, check_finite=False)
        ratio = (sigma[-1] / sigma[0]) ** 2 if sigma[0] > 0 else 0.0
        if not ratio >= _rank_threshold(d):
            raise RankDeficientError(
                f"R has numerical rank < n_factors={d}; lower n_factors or use regularization "
                f"> 0 ((sigma_min / sigma_max)^2 of R on span(X) is {ratio:.3g} < "
                f"{_rank_threshold(d):.3g})"
            )
    diag = np.abs(np.diag(t))
    if not diag.min() > d * _EPS * diag.max():
        raise RankDeficientError(f"a factor has numerical rank < n_factors={d}")
    return scipy.linalg.solve_triangular(t, y.T, check_finite=False).T


def _is_sparse(r: Any) -> bool:
    return scipy.sparse.issparse(r)


def _frobenius_sq(r: Any) -> float:
    data = r.data if _is_sparse(r) else r
    return float(np.vdot(data, data).real)


# ---------------------------------------------------------------------------------------------
# Public building blocks


def classical_step(
    R: Any, U: np.ndarray, V: np.ndarray, regularization: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """One classical ALS iteration, eqs. (2)-(3), with an optional ridge.

    ``U+ = R V (V^T V + lam I)^-1``, then ``V+ = R^T U+ (U+^T U+ + lam I)^-1``.

    Parameters
    ----------
    R : (m, n) array_like or scipy.sparse matrix
        Data matrix.
    U : (m, d) ndarray
        Current user factor. Only its shape is used: eq. (2) overwrites it.
    V : (n, d) ndarray
        Current item factor.
    regularization : float, default 0.0
        Ridge weight ``lam >= 0``.

    Returns
    -------
    U, V : ndarray
        The updated factors, (m, d) and (n, d).

    Raises
    ------
    RankDeficientError
        ``lam = 0`` and ``(sigma_min / sigma_max)^2 < 1e3 * d * eps`` for R on span(V) or R^T
        on span(U+): R has numerical rank below d.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> R = rng.standard_normal((6, 4))
    >>> U, V = classical_step(R, np.zeros((6, 2)), rng.standard_normal((4, 2)))
    >>> U.shape, V.shape
    ((6, 2), (4, 2))
    """
    lam = _check_regularization(regularization)
    m, n = R.shape
    U = np.asarray(U, dtype=np.float64)
    V = np.asarray(V, dtype=np.float64)
    if V.ndim != 2 or V.shape[0] != n or U.shape != (m, V.shape[1]):
        raise ValueError(
            f"U and V must have shapes ({m}, d) and ({n}, d) for R of shape {R.shape}, "
            f"got {U.shape} and {V.shape}"
        )
    U = _half_step(R, V, lam)
    V = _half_step(R.T, U, lam)
    return U, V


def update_matrix(F: np.ndarray, S: np.ndarray, regularization: float = 0.0) -> np.ndarray:
    """The d x d master-side update matrix G of the one-factor iteration ``B+ = E G``.

    With ``F = B^T B`` and ``S = B^T E = B^T D B``:

    - ``lam = 0``: ``G = S^-1 F`` (eq. 23), one Cholesky solve;
    - ``lam > 0``: ``G = (S + lam K^2)^-1 K`` with ``K = F + lam I``, which is eqs. (2)-(3)
      with a ridge composed into one step (derivation in ``docs/regularization.md``). It is
      evaluated as the equal ``G = K^-1 (T + lam I)^-1`` with ``T = K^-1 S K^-1`` (``= U^T U``):
      two Cholesky solves with condition numbers at most ``1 + ||F|| / lam`` and
      ``1 + ||T|| / lam``. Against 40-digit arithmetic it was as accurate as the first form for
      small lam and up to 1000 times more accurate for large lam, where the first form's
      ``lam K^2`` term dominates.

    F and S are replaced by their symmetric parts first.

    Parameters
    ----------
    F, S : (d, d) ndarray
        ``B^T B`` and ``B^T D B``.
    regularization : float, default 0.0
        Ridge weight ``lam >= 0``.

    Returns
    -------
    ndarray
        G, shape (d, d).

    Raises
    ------
    RankDeficientError
        ``mu_min / mu_max < 1e3 * d * eps`` for the generalized eigenvalues of ``S v = mu F v``
        (or F is singular), i.e. R has numerical rank below d, and lam is 0 or below
        ``(1e3 d eps ||S||_2)^(1/3)``, too small to regularize numerically.
    NonFiniteFactorsError
        F or S contains NaN or inf.

    Examples
    --------
    >>> F = np.array([[2.0, 0.0], [0.0, 1.0]])
    >>> S = np.array([[4.0, 0.0], [0.0, 3.0]])
    >>> update_matrix(F, S)
    array([[0.5       , 0.        ],
           [0.        , 0.33333333]])
    """
    lam = _check_regularization(regularization)
    F = np.asarray(F, dtype=np.float64)
    S = np.asarray(S, dtype=np.float64)
    _check_square("F", F)
    _check_square("S", S, F.shape[0])
    _check_finite("F or S", F, S)
    F = _sym(F)
    S = _sym(S)
    if lam == 0:
        _check_rank(F, S)
        return _pos_solve(S, F, "S", lam)
    if lam < _min_regularization(S):
        # Too small to matter numerically: S must then be nonsingular on its own.
        _check_rank(F, S, lam)
    shifted = _shifted(F, lam)
    t = _sym(_pos_solve(shifted, _pos_solve(shifted, S, "F + lam I", lam).T, "F + lam I", lam))
    inner = _pos_solve(t + lam * np.eye(t.shape[0]), np.eye(t.shape[0]), "T + lam I", lam)
    return _pos_solve(shifted, inner, "F + lam I", lam)


def one_factor_step(D: Any, B: np.ndarray, regularization: float = 0.0) -> np.ndarray:
    """One iteration of eq. (12): ``B+ = D B (B^T D B)^-1 B^T B`` (ridge form if ``lam > 0``).

    Computed as the engine does: ``E = D B``, ``F = B^T B``, ``S = B^T E``,
    ``G = update_matrix(F, S, lam)``, ``B+ = E G``.

    Parameters
    ----------
    D : (l, l) array_like or scipy.sparse matrix
        ``R^T R`` or ``R R^T`` (see :func:`gram`).
    B : (l, d) ndarray
        Current factor (V when ``D = R^T R``, U when ``D = R R^T``).
    regularization : float, default 0.0
        Ridge weight ``lam >= 0``.

    Returns
    -------
    ndarray
        The next B, shape (l, d).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> R = rng.standard_normal((8, 5))
    >>> D, transposed = gram(R)
    >>> one_factor_step(D, rng.standard_normal((5, 2))).shape
    (5, 2)
    """
    B = np.asarray(B, dtype=np.float64)
    if B.ndim != 2 or D.shape != (B.shape[0], B.shape[0]):
        raise ValueError(f"B must have shape ({D.shape[0]}, d) for D of shape {D.shape}")
    E = np.asarray(D @ B)
    F = B.T @ B
    S = B.T @ E
    return E @ update_matrix(F, S, regularization)


def objective_from_gram(
    trace_D: float, F: np.ndarray, S: np.ndarray, regularization: float = 0.0
) -> float:
    """Objective of the pair (other factor fitted to B, B) from d x d quantities only.

    With ``P = (F + lam I)^-1`` and ``||R||_F^2 = trace(D)``, the pair ``(R B P, B)`` (for
    ``B = V``; the roles swap for ``B = U``) has

        ||R - U V^T||_F^2 + lam (||U||_F^2 + ||V||_F^2)
            = trace(D) - 2 tr(P S) + tr(P S P F) + lam (tr(P S P) + tr(F)).

    Its absolute rounding error is a few ``eps * trace(D)``: when the residual is much smaller
    than ``||R||_F^2`` only the leading digits are meaningful.

    Parameters
    ----------
    trace_D : float
        ``trace(D) = ||R||_F^2``.
    F, S : (d, d) ndarray
        ``B^T B`` and ``B^T D B``.
    regularization : float, default 0.0
        Ridge weight ``lam >= 0``.

    Returns
    -------
    float
        The objective.

    Raises
    ------
    RankDeficientError
        ``lam = 0`` and F is singular.
    NonFiniteFactorsError
        An input contains NaN or inf.

    Examples
    --------
    >>> R = np.diag([3.0, 2.0, 1.0])
    >>> B = np.eye(3)[:, :2]
    >>> float(objective_from_gram(np.trace(R.T @ R), B.T @ B, B.T @ (R.T @ R) @ B))
    1.0
    """
    lam = _check_regularization(regularization)
    F = np.asarray(F, dtype=np.float64)
    S = np.asarray(S, dtype=np.float64)
    _check_square("F", F)
    _check_square("S", S, F.shape[0])
    _check_finite("trace_D, F or S", np.asarray(trace_D, dtype=np.float64), F, S)
    F = _sym(F)
    S = _sym(S)
    shifted = _shifted(F, lam)
    ps = _pos_solve(shifted, S, "F + lam I", lam)  # P S
    psp = _sym(_pos_solve(shifted, ps.T, "F + lam I", lam))  # P S P
    value = float(trace_D) - 2.0 * np.trace(ps) + np.sum(psp * F)
    if lam:
        value += lam * (np.trace(psp) + np.trace(F))
    return float(value)


def objective_noise(trace_D: float, F: np.ndarray, regularization: float = 0.0) -> float:
    """Estimated absolute rounding error of :func:`objective_from_gram`.

    The objective is ``trace(D)`` minus terms of the same size computed from ``S = B^T D B``,
    whose rounding error relative to ``trace(D)`` is amplified by the conditioning of the basis
    B. The estimate is ``2 eps trace(D) (8 + kappa)`` with ``kappa = cond(F + lam I)``, an
    envelope of measured errors (see ``OBJECTIVE_NOISE_FACTOR``). Changes of the objective below
    it cannot be told from rounding, so :func:`relative_objective_change` treats them as 0.

    Parameters
    ----------
    trace_D : float
        ``trace(D) = ||R||_F^2``.
    F : (d, d) ndarray
        ``B^T B``.
    regularization : float, default 0.0
        Ridge weight ``lam >= 0``.

    Returns
    -------
    float
        The estimate, >= 0; ``inf`` if ``F + lam I`` is singular.

    Examples
    --------
    >>> eps = np.finfo(float).eps
    >>> bool(objective_noise(1.0, np.eye(3)) == 18 * eps)
    True
    """
    lam = _check_regularization(regularization)
    F = np.asarray(F, dtype=np.float64)
    _check_square("F", F)
    _check_finite("trace_D or F", np.asarray(trace_D, dtype=np.float64), F)
    w = scipy.linalg.eigvalsh(_shifted(_sym(F), lam), check_finite=False)
    kappa = w[-1] / w[0] if w[0] > 0 else math.inf
    return OBJECTIVE_NOISE_FACTOR * _EPS * abs(float(trace_D)) * (OBJECTIVE_NOISE_OFFSET + kappa)


def relative_objective_change(prev: float, cur: float, noise: float = 0.0) -> float:
    """Relative change ``|prev - cur| / max(|cur|, tiny)`` used by the convergence test.

    The iteration has converged when this is ``< tol``. A change of at most ``noise`` (pass
    :func:`objective_noise`) is rounding error and counts as 0: without that, an objective
    computed from Gram matrices, whose error is a few ``eps * ||R||_F^2``, would never pass a
    small ``tol`` when the optimum is much smaller than ``||R||_F^2`` (e.g. 0 for an exactly
    rank-d R). The default ``noise = 0`` gives the plain formula.

    Parameters
    ----------
    prev, cur : float
        Objective before and after an iteration.
    noise : float, default 0.0
        Absolute size of the objective's rounding error.

    Returns
    -------
    float
        The relative change, >= 0 (NaN if an input is NaN).

    Examples
    --------
    >>> relative_objective_change(10.0, 8.0)
    0.25
    >>> relative_objective_change(3e-15, 1e-15, noise=1e-14)
    0.0
    """
    delta = abs(float(prev) - float(cur))
    if delta <= noise:
        return 0.0
    return delta / max(abs(float(cur)), _TINY)


def factors_from_b(
    R: Any, B: np.ndarray, transposed: bool, regularization: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Post-computation, eqs. (29)-(31) corrected: the factor pair (U, V) from the final B.

    ``H = B (B^T B + lam I)^-1``. If ``transposed`` is False (m >= n): ``V = B`` and
    ``U = R H``; otherwise ``U = B`` and ``V = R^T H``. The paper's eqs. (31a)/(31b) swap R and
    R^T, which does not even give matching shapes when m != n.

    Parameters
    ----------
    R : (m, n) array_like or scipy.sparse matrix
        Data matrix.
    B : ndarray
        Final factor: (n, d) if ``transposed`` is False, else (m, d).
    transposed : bool
        As returned by :func:`gram`.
    regularization : float, default 0.0
        Ridge weight ``lam >= 0``; the other factor is then the ridge fit to B.

    Returns
    -------
    U, V : ndarray
        (m, d) and (n, d).

    Examples
    --------
    >>> R = np.arange(12.0).reshape(4, 3)
    >>> U, V = factors_from_b(R, np.eye(3)[:, :2], transposed=False)
    >>> U.shape, V.shape
    ((4, 2), (3, 2))
    """
    lam = _check_regularization(regularization)
    if not _is_sparse(R):
        R = np.asarray(R, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    m, n = R.shape
    rows = m if transposed else n
    if B.ndim != 2 or B.shape[0] != rows:
        raise ValueError(
            f"B must have shape ({rows}, d) for R of shape {R.shape} and "
            f"transposed={transposed}, got {B.shape}"
        )
    _check_finite("B", B)
    F = B.T @ B
    if lam == 0:
        # H needs (B^T B)^-1; a rank-deficient B is reported rather than inverted.
        d = F.shape[0]
        if np.linalg.cond(F) * _EPS > 1.0 / (RANK_RTOL_PER_FACTOR * d):
            raise RankDeficientError(f"B^T B is numerically singular (n_factors={d})")
    H = _pos_solve(_shifted(F, lam), B.T, "B^T B + lam I", lam).T
    if transposed:
        return B, np.asarray(R.T @ H)
    return np.asarray(R @ H), B


def initial_factor(
    size: int, n_factors: int, seed: int | np.random.Generator | None = None
) -> np.ndarray:
    """Seeded random start ``B0`` (standard normal), shared by the reference and the engine.

    Parameters
    ----------
    size : int
        l = min(m, n), the number of rows of B.
    n_factors : int
        d.
    seed : int, numpy.random.Generator or None
        Passed to :func:`numpy.random.default_rng`.

    Returns
    -------
    ndarray
        Shape (size, n_factors), float64.

    Examples
    --------
    >>> initial_factor(3, 2, seed=0).shape
    (3, 2)
    >>> bool(np.array_equal(initial_factor(3, 2, 7), initial_factor(3, 2, 7)))
    True
    """
    return np.random.default_rng(seed).standard_normal((int(size), int(n_factors)))


# ---------------------------------------------------------------------------------------------
# The driver


@dataclass
class ALSResult:
    """Result of :func:`fit_als`.

    Attributes
    ----------
    user_factors : ndarray
        U, shape (m, d).
    item_factors : ndarray
        V, shape (n, d).
    objective_history : list of float
        ``objective_history[k]`` is the objective after k iterations (index 0: the start), so
        it has ``n_iter + 1`` entries and the last one belongs to the returned factors.
    n_iter : int
        Number of iterations (updates of B) performed.
    converged : bool
        Whether the relative objective change fell below ``tol``.
    """

    user_factors: np.ndarray
    item_factors: np.ndarray
    objective_history: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False


def _validate_data(R: Any) -> Any:
    if _is_sparse(R):
        if R.ndim != 2:
            raise ValueError(f"R must be 2-D, got {R.ndim} dimensions")
        if not np.issubdtype(R.dtype, np.number) or np.issubdtype(R.dtype, np.complexfloating):
            raise ValueError(f"R must be real-valued, got dtype {R.dtype}")
        R = scipy.sparse.csr_matrix(R, dtype=np.float64)
        values = R.data
    else:
        R = np.asarray(R)
        if R.ndim != 2:
            raise ValueError(f"R must be 2-D, got {R.ndim} dimensions")
        if not np.issubdtype(R.dtype, np.number) or np.issubdtype(R.dtype, np.complexfloating):
            raise ValueError(f"R must be real-valued, got dtype {R.dtype}")
        R = R.astype(np.float64, copy=False)
        values = R
    if min(R.shape) < 1:
        raise ValueError(f"R must be non-empty, got shape {R.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("R must be finite (it contains NaN or inf); encode missing ratings as 0")
    return R


def fit_als(
    R: Any,
    n_factors: int,
    max_iter: int = 50,
    tol: float = 1e-9,
    regularization: float = 0.0,
    seed: int | np.random.Generator | None = None,
    method: Method = "one-factor",
) -> ALSResult:
    """Factorize ``R ~ U V^T`` by alternating least squares.

    Both methods start from ``B0 = initial_factor(min(m, n), n_factors, seed)`` (V if m >= n,
    else U) and produce the same iterates in exact arithmetic. One iteration of
    ``"one-factor"`` is, as the engine runs it:

    1. ``G = update_matrix(F, S, lam)``, ``B = E G`` (F, S, E of the current B);
    2. ``E = D B``, ``F = B^T B``, ``S = B^T E``;
       ``f = objective_from_gram(trace(D), F, S, lam)``;
    3. stop if ``relative_objective_change(f_prev, f, objective_noise(trace(D), F, lam)) < tol``.

    ``"classical"`` fits the other factor to B (eq. 2), then alternates eqs. (3) and (2) with
    :func:`classical_step`, recording the explicit objective. At the end the other factor is the
    (ridge) least-squares fit to B (:func:`factors_from_b`).

    Parameters
    ----------
    R : (m, n) array_like or scipy.sparse matrix
        Data matrix, finite and real; missing ratings are 0.
    n_factors : int
        Latent dimension d, ``1 <= d <= min(m, n)``.
    max_iter : int, default 50
        Maximum number of iterations, >= 1.
    tol : float, default 1e-9
        Stop when the relative objective change is below ``tol`` (0: run ``max_iter``).
    regularization : float, default 0.0
        Ridge weight ``lam >= 0`` on ``||U||_F^2 + ||V||_F^2``.
    seed : int, numpy.random.Generator or None
        Seed of the random start.
    method : {"one-factor", "classical"}
        Eq. (12) on the smaller Gram matrix, or eqs. (2)-(3).

    Returns
    -------
    ALSResult

    Raises
    ------
    ValueError
        Invalid arguments.
    RankDeficientError
        R has numerical rank below ``n_factors`` and ``lam = 0`` (or, for the one-factor
        method, lam is below the rounding level of S; see :func:`update_matrix`).
    NonFiniteFactorsError
        The factors overflowed.

    Notes
    -----
    The one-factor method works with ``D = R^T R``, which squares the conditioning of R.
    On an 80 x 60 R with d = 5, the final residual exceeded the truncated-SVD optimum as follows:
    - sigma_5 / sigma_1 = 1e-3: 1e-13 relative;
    - 1e-4: 3e-7;
    - 1e-5: 8e-2.
    The classical method stayed within 1e-12 in all three cases.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> R = rng.standard_normal((30, 3)) @ rng.standard_normal((3, 20))
    >>> result = fit_als(R, 3, seed=0)
    >>> result.converged, result.user_factors.shape, result.item_factors.shape
    (True, (30, 3), (20, 3))
    >>> bool(np.allclose(result.user_factors @ result.item_factors.T, R))
    True
    """
    R = _validate_data(R)
    m, n = R.shape
    if isinstance(n_factors, bool) or not isinstance(n_factors, (int, np.integer)):
        raise ValueError(f"n_factors must be an integer, got {n_factors!r}")
    if not 1 <= n_factors <= min(m, n):
        raise ValueError(f"n_factors must be between 1 and min(m, n)={min(m, n)}, got {n_factors}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not (isinstance(tol, (int, float, np.floating)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    lam = _check_regularization(regularization)
    if method not in ("one-factor", "classical"):
        raise ValueError(f"method must be 'one-factor' or 'classical', got {method!r}")
    d = int(n_factors)
    transposed = m < n
    B = initial_factor(min(m, n), d, seed)
    if method == "one-factor":
        return _fit_one_factor(R, B, int(max_iter), float(tol), lam)
    return _fit_classical(R, B, transposed, int(max_iter), float(tol), lam)


def _fit_one_factor(R: Any, B: np.ndarray, max_iter: int, tol: float, lam: float) -> ALSResult:
    D, transposed = gram(R)
    if not np.all(np.isfinite(D)):
        raise NonFiniteFactorsError("the Gram matrix of R overflowed; rescale R")
    trace_D = float(np.trace(D))

    E = D @ B
    F = B.T @ B
    S = B.T @ E
    history = [objective_from_gram(trace_D, F, S, lam)]
    converged = False
    n_iter = 0
    for t in range(1, max_iter + 1):
        B = E @ update_matrix(F, S, lam)
        if not np.all(np.isfinite(B)):
            raise NonFiniteFactorsError(f"factors became NaN/inf at iteration {t}")
        n_iter = t
        E = D @ B
        F = B.T @ B
        S = B.T @ E
        history.append(objective_from_gram(trace_D, F, S, lam))
        noise = objective_noise(trace_D, F, lam)
        if relative_objective_change(history[-2], history[-1], noise) < tol:
            converged = True
            break
    U, V = factors_from_b(R, B, transposed, lam)
    return ALSResult(U, V, history, n_iter, converged)


def _objective(R: Any, U: np.ndarray, V: np.ndarray, lam: float, norm_sq: float) -> float:
    if _is_sparse(R):
        # Expanded so the m x n residual is never formed densely.
        ut_r_v = float(np.sum(U * np.asarray(R @ V)))
        value = norm_sq - 2.0 * ut_r_v + float(np.sum((U.T @ U) * (V.T @ V)))
    else:
        value = float(np.sum((R - U @ V.T) ** 2))
    return value + lam * (float(np.sum(U * U)) + float(np.sum(V * V)))


def _fit_classical(
    R: Any, B: np.ndarray, transposed: bool, max_iter: int, tol: float, lam: float
) -> ALSResult:
    # Work with the orientation in which B is the second factor: Rw ~ A B^T.
    Rw = R.T if transposed else R
    norm_sq = _frobenius_sq(R)
    A = _half_step(Rw, B, lam)  # eq. (2)
    history = [_objective(Rw, A, B, lam, norm_sq)]
    converged = False
    n_iter = 0
    for t in range(1, max_iter + 1):
        # classical_step on Rw^T with the roles swapped: eq. (3) for B, then eq. (2) for A, so
        # that B follows the same iterates as the one-factor method.
        B, A = classical_step(Rw.T, B, A, lam)
        if not (np.all(np.isfinite(A)) and np.all(np.isfinite(B))):
            raise NonFiniteFactorsError(f"factors became NaN/inf at iteration {t}")
        n_iter = t
        history.append(_objective(Rw, A, B, lam, norm_sq))
        # The same noise rule as the one-factor method, so both stop at the same iteration.
        noise = objective_noise(norm_sq, B.T @ B, lam)
        if relative_objective_change(history[-2], history[-1], noise) < tol:
            converged = True
            break
    U, V = (B, A) if transposed else (A, B)
    return ALSResult(U, V, history, n_iter, converged)
