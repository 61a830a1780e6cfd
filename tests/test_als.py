"""Tests of the reference ALS against oracles computed independently of it.

The oracles: the truncated SVD (Eckart-Young), the classical updates (2)-(3) composed by hand,
least-squares solutions from ``numpy.linalg.lstsq`` and the objective evaluated on explicit
factors.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse
from hypothesis import given, settings
from hypothesis import strategies as st

from dask_coded_als.als import (
    ALSResult,
    NonFiniteFactorsError,
    RankDeficientError,
    classical_step,
    factors_from_b,
    fit_als,
    gram,
    initial_factor,
    objective_from_gram,
    objective_noise,
    one_factor_step,
    relative_objective_change,
    update_matrix,
)

METHODS = ["one-factor", "classical"]


def low_rank(m: int, n: int, rank: int = 5, noise: float = 1e-3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n))
    return signal + noise * rng.standard_normal((m, n))


def sparse_low_rank(m: int, n: int, rank: int = 5, seed: int = 0) -> scipy.sparse.csr_matrix:
    # Zero rows of U and of V give a sparse R that is still rank 5 plus noise on its support.
    rng = np.random.default_rng(seed)
    left = rng.standard_normal((m, rank)) * (rng.random((m, 1)) < 0.5)
    right = rng.standard_normal((n, rank)) * (rng.random((n, 1)) < 0.5)
    dense = left @ right.T
    dense += 1e-3 * rng.standard_normal((m, n)) * (dense != 0)
    return scipy.sparse.csr_matrix(dense)


def svd_optimum(R: np.ndarray, d: int) -> float:
    """min ||R - X||_F over rank-d X: the norm of the discarded singular values."""
    sigma = scipy.linalg.svd(R, compute_uv=False)
    return float(np.sqrt(np.sum(sigma[d:] ** 2)))


def explicit_objective(R: np.ndarray, U: np.ndarray, V: np.ndarray, lam: float = 0.0) -> float:
    return float(np.sum((R - U @ V.T) ** 2) + lam * (np.sum(U**2) + np.sum(V**2)))


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --------------------------------------------------------------------------------------------
# Truncated-SVD oracle


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(120, 80), (70, 110)])
def test_converges_to_truncated_svd_optimum(shape: tuple[int, int], method: str) -> None:
    R = low_rank(*shape)
    result = fit_als(R, 5, seed=1, method=method)
    assert isinstance(result, ALSResult)
    assert result.converged
    assert result.user_factors.shape == (shape[0], 5)
    assert result.item_factors.shape == (shape[1], 5)
    residual = np.linalg.norm(R - result.user_factors @ result.item_factors.T)
    assert abs(residual / svd_optimum(R, 5) - 1) < 1e-10
    # History: one entry per iteration plus the start, non-increasing up to rounding, and the
    # last entry is the objective of the returned factors.
    history = np.array(result.objective_history)
    assert len(history) == result.n_iter + 1
    assert np.all(np.diff(history) <= 1e-12 * history[0])
    assert abs(history[-1] - residual**2) <= 1e-12 * history[0]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(90, 60), (50, 100)])
def test_sparse_input_converges_to_truncated_svd_optimum(
    shape: tuple[int, int], method: str
) -> None:
    R = sparse_low_rank(*shape)
    dense = R.toarray()
    result = fit_als(R, 5, seed=2, method=method)
    assert result.converged
    residual = np.linalg.norm(dense - result.user_factors @ result.item_factors.T)
    assert abs(residual / svd_optimum(dense, 5) - 1) < 1e-10
    # Same iterates as the dense input.
    fixed = {"seed": 2, "method": method, "tol": 0.0, "max_iter": 4}
    from_sparse = fit_als(R, 5, **fixed)
    from_dense = fit_als(dense, 5, **fixed)
    assert rel(from_sparse.item_factors, from_dense.item_factors) < 1e-10
    assert rel(from_sparse.user_factors, from_dense.user_factors) < 1e-10


def test_exactly_low_rank_input_is_reported_converged() -> None:
    # The optimum is 0, so the relative change is rounding noise; the noise floor stops it.
    R = low_rank(60, 40, rank=5, noise=0.0)
    for method in METHODS:
        result = fit_als(R, 5, seed=0, method=method)
        assert result.converged and result.n_iter <= 5
        residual = np.linalg.norm(R - result.user_factors @ result.item_factors.T)
        assert residual < 1e-12 * np.linalg.norm(R)


@pytest.mark.parametrize("shape", [(50, 35), (35, 50)])
def test_methods_produce_the_same_iterates(shape: tuple[int, int]) -> None:
    R = low_rank(*shape, noise=0.5)
    for lam in (0.0, 2.0):
        one = fit_als(R, 4, seed=3, tol=0.0, max_iter=6, regularization=lam)
        two = fit_als(R, 4, seed=3, tol=0.0, max_iter=6, regularization=lam, method="classical")
        assert one.n_iter == two.n_iter == 6 and not one.converged
        assert rel(one.user_factors, two.user_factors) < 1e-10
        assert rel(one.item_factors, two.item_factors) < 1e-10
        assert np.allclose(one.objective_history, two.objective_history, rtol=1e-10, atol=0)


# --------------------------------------------------------------------------------------------
# Lemma 1: eq. (12) is eqs. (2)-(3) composed


@pytest.mark.parametrize("lam", [0.0, 0.3, 25.0])
@pytest.mark.parametrize("shape", [(40, 30), (30, 40)])
def test_one_factor_step_equals_two_classical_half_steps(
    shape: tuple[int, int], lam: float
) -> None:
    rng = np.random.default_rng(4)
    R = rng.standard_normal(shape)
    U0 = rng.standard_normal((shape[0], 6))
    V0 = rng.standard_normal((shape[1], 6))
    U1, V1 = classical_step(R, U0, V0, lam)
    U2, V2 = classical_step(R, U1, V1, lam)
    RtR, RRt = R.T @ R, R @ R.T
    # V from V (eq. 8) and U from U (eq. 9).
    assert rel(one_factor_step(RtR, V0, lam), V1) < 1e-10
    assert rel(one_factor_step(RtR, V1, lam), V2) < 1e-10
    assert rel(one_factor_step(RRt, U1, lam), U2) < 1e-10


def test_classical_step_is_the_least_squares_update() -> None:
    rng = np.random.default_rng(5)
    R = rng.standard_normal((25, 18))
    V0 = rng.standard_normal((18, 4))
    U1, V1 = classical_step(R, np.zeros((25, 4)), V0)
    assert rel(U1, np.linalg.lstsq(V0, R.T, rcond=None)[0].T) < 1e-12
    assert rel(V1, np.linalg.lstsq(U1, R, rcond=None)[0].T) < 1e-12


@pytest.mark.parametrize("lam", [1e-3, 0.7, 50.0])
def test_ridge_update_matrix_equals_composed_classical_steps(lam: float) -> None:
    rng = np.random.default_rng(6)
    R = rng.standard_normal((50, 35))
    B = rng.standard_normal((35, 5))
    D = R.T @ R
    E, F = D @ B, B.T @ B
    S = B.T @ E
    G = update_matrix(F, S, lam)
    # The V that the two ridge classical steps produce from V = B ...
    _, V1 = classical_step(R, np.zeros((50, 5)), B, lam)
    assert rel(E @ G, V1) < 1e-10
    # ... determines G, because E has full column rank.
    assert rel(G, np.linalg.lstsq(E, V1, rcond=None)[0]) < 1e-9
    # The closed form G = (S + lam (F + lam I)^2)^-1 (F + lam I) of docs/regularization.md.
    K = F + lam * np.eye(5)
    assert rel(G, np.linalg.solve(S + lam * K @ K, K)) < 1e-10
    # Substituting U = R B P into V+ = R^T U (U^T U + lam I)^-1 with P = K^-1.
    P = np.linalg.inv(K)
    assert rel(G, P @ np.linalg.inv(P @ S @ P + lam * np.eye(5))) < 1e-10


def test_update_matrix_without_ridge_is_eq_23() -> None:
    rng = np.random.default_rng(7)
    B = rng.standard_normal((20, 3))
    A = rng.standard_normal((20, 20))
    D = A @ A.T
    F, S = B.T @ B, B.T @ D @ B
    assert rel(update_matrix(F, S), np.linalg.solve(S, F)) < 1e-12


# --------------------------------------------------------------------------------------------
# Objective from d x d quantities


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    m=st.integers(2, 30),
    n=st.integers(2, 30),
    d=st.integers(1, 6),
    lam=st.sampled_from([0.0, 1e-3, 0.5, 40.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_objective_from_gram_equals_explicit_objective(
    m: int, n: int, d: int, lam: float, seed: int
) -> None:
    d = min(d, m, n)
    rng = np.random.default_rng(seed)
    R = rng.standard_normal((m, n))
    D, transposed = gram(R)
    B = rng.standard_normal((D.shape[0], d))
    U, V = factors_from_b(R, B, transposed, lam)
    F, S = B.T @ B, B.T @ D @ B
    trace_D = float(np.trace(D))
    from_gram = objective_from_gram(trace_D, F, S, lam)
    explicit = explicit_objective(R, U, V, lam)
    assert abs(from_gram - explicit) <= objective_noise(trace_D, F, lam)
    assert abs(from_gram - explicit) <= 1e-9 * (trace_D + explicit)


def test_objective_from_gram_examples_with_known_values() -> None:
    R = np.diag([3.0, 2.0, 1.0])
    D = R.T @ R
    B = np.eye(3)[:, :2]
    assert objective_from_gram(14.0, B.T @ B, B.T @ D @ B) == pytest.approx(1.0, abs=1e-14)
    # Ridge on one direction: min (3 - u v)^2 + lam (u^2 + v^2) at v = 1 has u = 3 / (1 + lam).
    lam = 0.5
    b = np.array([[1.0], [0.0], [0.0]])
    u = 3.0 / (1.0 + lam)
    expected = (3.0 - u) ** 2 + 4.0 + 1.0 + lam * (u**2 + 1.0)
    value = objective_from_gram(14.0, b.T @ b, b.T @ D @ b, lam)
    assert value == pytest.approx(expected, rel=1e-14)


# --------------------------------------------------------------------------------------------
# Post-computation and the eq. (31) erratum


def test_eq31_erratum_r_and_rt_are_swapped() -> None:
    rng = np.random.default_rng(8)
    tall = rng.standard_normal((12, 7))  # m >= n: B = V, the paper's (31a) says U = R^T H
    V = rng.standard_normal((7, 3))
    H = V @ np.linalg.inv(V.T @ V)
    with pytest.raises(ValueError):
        tall.T @ H  # (7 x 12) @ (7 x 3): shapes do not even match
    U, V_out = factors_from_b(tall, V, transposed=False)
    assert V_out is not None and np.array_equal(V_out, V)
    assert rel(U, tall @ H) < 1e-12
    # U = R H is the least-squares fit of R ~ U V^T for this V.
    assert rel(U, np.linalg.lstsq(V, tall.T, rcond=None)[0].T) < 1e-12

    wide = rng.standard_normal((7, 12))  # m < n: B = U, the paper's (31b) says V = R H
    U = rng.standard_normal((7, 3))
    H = U @ np.linalg.inv(U.T @ U)
    with pytest.raises(ValueError):
        wide @ H  # (7 x 12) @ (7 x 3)
    U_out, V = factors_from_b(wide, U, transposed=True)
    assert np.array_equal(U_out, U)
    assert rel(V, np.linalg.lstsq(U, wide, rcond=None)[0].T) < 1e-12

    # Square and not symmetric: the swapped formula runs but does not minimize.
    square = rng.standard_normal((9, 9))
    B = rng.standard_normal((9, 3))
    H = B @ np.linalg.inv(B.T @ B)
    U, _ = factors_from_b(square, B, transposed=False)
    assert explicit_objective(square, U, B) < explicit_objective(square, square.T @ H, B)


def test_factors_from_b_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="B must have shape"):
        factors_from_b(np.ones((5, 4)), np.ones((5, 2)), transposed=False)


# --------------------------------------------------------------------------------------------
# Rank deficiency and non-finite values


def rank_three(m: int, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, 3)) @ rng.standard_normal((3, n))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(40, 30), (30, 40)])
def test_rank_deficient_input_raises_instead_of_returning_nan(
    shape: tuple[int, int], method: str
) -> None:
    R = rank_three(*shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or invalid-value warning on the way
        with pytest.raises(RankDeficientError, match=r"rank < n_factors=5"):
            fit_als(R, 5, seed=0, method=method)


def test_update_matrix_rejects_singular_s() -> None:
    rng = np.random.default_rng(9)
    R = rank_three(30, 20)
    B = rng.standard_normal((20, 5))
    F, S = B.T @ B, B.T @ (R.T @ R) @ B
    with pytest.raises(RankDeficientError, match="regularization > 0"):
        update_matrix(F, S)
    with pytest.raises(RankDeficientError):
        update_matrix(np.zeros((2, 2)), np.eye(2))  # B^T B singular
    assert np.all(np.isfinite(update_matrix(F, S, 1.0)))


def test_rank_threshold_is_1e3_d_eps_on_the_generalized_eigenvalue_ratio() -> None:
    # F = I, S = diag(1, r): the generalized eigenvalue ratio is r; threshold 1e3 * 2 * eps.
    assert np.allclose(update_matrix(np.eye(2), np.diag([1.0, 1e-10])), np.diag([1.0, 1e10]))
    assert np.allclose(update_matrix(np.eye(2), np.diag([1.0, 5e-13])), np.diag([1.0, 2e12]))
    for ratio in (4e-13, 1e-14, 0.0, -1e-3):
        with pytest.raises(RankDeficientError, match="generalized eigenvalue"):
            update_matrix(np.eye(2), np.diag([1.0, ratio]))


@pytest.mark.parametrize("method", METHODS)
def test_ill_conditioned_full_rank_input_is_accepted(method: str) -> None:
    # sigma_5 / sigma_1 = 1e-3: the eigenvalue ratio 1e-6 is far above the threshold.
    rng = np.random.default_rng(12)
    left = np.linalg.qr(rng.standard_normal((80, 60)))[0]
    right = np.linalg.qr(rng.standard_normal((60, 60)))[0]
    sigma = np.concatenate([np.geomspace(1.0, 1e-3, 5), 1e-5 * np.geomspace(1.0, 0.5, 55)])
    R = (left * sigma) @ right.T
    result = fit_als(R, 5, seed=0, method=method)
    residual = np.linalg.norm(R - result.user_factors @ result.item_factors.T)
    assert result.converged
    assert abs(residual / svd_optimum(R, 5) - 1) < 1e-10


@pytest.mark.parametrize("shape", [(40, 30), (30, 40)])
def test_rank_deficient_input_with_ridge_gives_finite_factors(shape: tuple[int, int]) -> None:
    R = rank_three(*shape)
    one = fit_als(R, 5, seed=0, regularization=1.0)
    two = fit_als(R, 5, seed=0, regularization=1.0, method="classical")
    for result in (one, two):
        assert np.all(np.isfinite(result.user_factors))
        assert np.all(np.isfinite(result.item_factors))
        history = np.array(result.objective_history)
        assert np.all(np.diff(history) <= 1e-12 * history[0])
    assert abs(one.objective_history[-1] / two.objective_history[-1] - 1) < 1e-9
    product = one.user_factors @ one.item_factors.T
    assert rel(product, two.user_factors @ two.item_factors.T) < 1e-8
    assert rel(product, R) < 0.1


def test_ridge_below_rounding_level_is_rejected_by_one_factor_only() -> None:
    # The one-factor update divides by lam^3 along directions that B has lost.
    R = rank_three(40, 30)
    with pytest.raises(RankDeficientError, match="method='classical'"):
        fit_als(R, 5, seed=0, regularization=1e-6)
    result = fit_als(R, 5, seed=0, regularization=1e-6, method="classical")
    assert np.all(np.isfinite(result.user_factors)) and np.all(np.isfinite(result.item_factors))


def test_non_finite_master_inputs_raise() -> None:
    F = np.eye(3)
    bad = np.eye(3)
    bad[0, 1] = np.nan
    with pytest.raises(NonFiniteFactorsError):
        update_matrix(F, bad)
    with pytest.raises(NonFiniteFactorsError):
        update_matrix(bad, F, 0.5)
    with pytest.raises(NonFiniteFactorsError):
        objective_from_gram(np.inf, F, F)
    assert issubclass(NonFiniteFactorsError, FloatingPointError)
    assert issubclass(RankDeficientError, ValueError)


def test_overflowing_gram_matrix_raises() -> None:
    R = np.full((6, 4), 1e200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(NonFiniteFactorsError, match="overflow"):
            fit_als(R, 2, seed=0)


# --------------------------------------------------------------------------------------------
# Argument validation


def _with_nan() -> np.ndarray:
    R = np.ones((5, 4))
    R[2, 1] = np.nan
    return R


@pytest.mark.parametrize(
    ("R", "kwargs", "match"),
    [
        (np.ones((5, 4)), {"n_factors": 0}, "n_factors"),
        (np.ones((5, 4)), {"n_factors": 5}, "n_factors"),
        (np.ones((4, 5)), {"n_factors": 5}, "n_factors"),
        (np.ones((5, 4)), {"n_factors": 2.0}, "n_factors"),
        (np.ones((5, 4)), {"n_factors": True}, "n_factors"),
        (_with_nan(), {"n_factors": 2}, "finite"),
        (np.full((5, 4), np.inf), {"n_factors": 2}, "finite"),
        (scipy.sparse.csr_matrix(_with_nan()), {"n_factors": 2}, "finite"),
        (np.ones(5), {"n_factors": 1}, "2-D"),
        (np.ones((2, 3, 4)), {"n_factors": 1}, "2-D"),
        (np.ones((5, 4), dtype=complex), {"n_factors": 1}, "real"),
        (np.ones((5, 4)), {"n_factors": 2, "regularization": -1.0}, "regularization"),
        (np.ones((5, 4)), {"n_factors": 2, "regularization": np.nan}, "regularization"),
        (np.ones((5, 4)), {"n_factors": 2, "max_iter": 0}, "max_iter"),
        (np.ones((5, 4)), {"n_factors": 2, "tol": -1e-3}, "tol"),
        (np.ones((5, 4)), {"n_factors": 2, "method": "svd"}, "method"),
    ],
)
def test_bad_arguments_raise_value_error(R: np.ndarray, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit_als(R, **kwargs)


def test_helpers_reject_negative_regularization() -> None:
    with pytest.raises(ValueError, match="regularization"):
        update_matrix(np.eye(2), np.eye(2), -0.1)
    with pytest.raises(ValueError, match="regularization"):
        classical_step(np.ones((3, 2)), np.ones((3, 1)), np.ones((2, 1)), -1.0)


# --------------------------------------------------------------------------------------------
# Small helpers


def test_gram_orientation_and_sparse_input() -> None:
    rng = np.random.default_rng(10)
    tall = rng.standard_normal((9, 4))
    D, transposed = gram(tall)
    assert not transposed and np.allclose(D, tall.T @ tall, rtol=1e-14, atol=1e-13)
    D, transposed = gram(tall.T)
    assert transposed and D.shape == (4, 4)
    D_sparse, transposed = gram(scipy.sparse.csr_matrix(tall))
    assert isinstance(D_sparse, np.ndarray) and not transposed
    assert np.array_equal(D_sparse, D_sparse.T)
    assert np.allclose(D_sparse, tall.T @ tall, rtol=1e-14, atol=1e-13)


def test_initial_factor_is_seeded_standard_normal() -> None:
    B = initial_factor(7, 3, seed=11)
    assert B.shape == (7, 3) and B.dtype == np.float64
    assert np.array_equal(B, np.random.default_rng(11).standard_normal((7, 3)))
    assert np.array_equal(B, initial_factor(7, 3, 11))


def test_relative_objective_change() -> None:
    assert relative_objective_change(10.0, 8.0) == 0.25
    assert relative_objective_change(8.0, 10.0) == 0.2
    assert relative_objective_change(0.0, 0.0) == 0.0
    assert relative_objective_change(1e-300, 0.0) > 1.0  # tiny, not 0, in the denominator
    assert relative_objective_change(2.0, 1.0, noise=1.0) == 0.0
    assert relative_objective_change(2.0, 1.0, noise=0.5) == 1.0


def test_objective_noise_scales_with_conditioning() -> None:
    eps = np.finfo(float).eps
    assert objective_noise(1.0, np.eye(4)) == pytest.approx(18 * eps)
    assert objective_noise(3.0, np.diag([1.0, 1e-4])) == pytest.approx(2 * eps * 3.0 * (8 + 1e4))
    assert objective_noise(1.0, np.diag([1.0, 0.0])) == np.inf
    assert objective_noise(1.0, np.diag([1.0, 0.0]), 1.0) == pytest.approx(2 * eps * 10)
