"""Worker results checked by the code's redundancy: numpy products as the truth, errors injected
at known workers."""

from __future__ import annotations

import doctest
import warnings

import numpy as np
import pytest

from dask_coded_als.coding import checking
from dask_coded_als.coding.checking import (
    SAFETY_FACTOR,
    UncorrectableError,
    check_consistency,
    locate_wrong_answers,
)
from dask_coded_als.coding.codes import ALSCode, EntangledPolynomialCode, NumericalWarning

SCHEMES = [None, "real"]


def rel_err(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.linalg.norm(x - y) / np.linalg.norm(y))


def stage1(h: int, n_workers: int, points, seed: int = 0, rows: int = 3, d: int = 2):
    """The stage-1 code, its operands D (symmetric, ratings-like) and B, every worker's result and
    the truth ``D @ B`` from numpy."""
    rng = np.random.default_rng(seed)
    als = ALSCode(h, n_workers, points)
    size = als.block_multiple * rows
    x = rng.random((6, size)) * (rng.random((6, size)) < 0.5)
    D = x.T @ x + np.diag(rng.random(size))
    B = rng.standard_normal((size, d))
    data, factor = als.encode_data(D), als.encode_factor(B)
    results = {w: als.stage1(data[w], factor[w]) for w in range(n_workers)}
    return als.product_code, results, D @ B


def run(n_workers: int, k: int, start: int) -> list[int]:
    """k workers in a row on the circle (the worst conditioning), starting at ``start``."""
    return sorted((start + i) % n_workers for i in range(k))


def hardest(code: EntangledPolynomialCode, workers: list[int], m: int) -> list[int]:
    """The m workers whose errors the fit hides best: the highest leverage (the squared norm of
    their row of an orthonormal basis of the fitted space)."""
    matrix = code.points[workers, None] ** code.product_exponents[None, :]
    basis = np.linalg.svd(matrix, full_matrices=False)[0]
    leverage = np.sum(np.abs(basis) ** 2, axis=1)
    return [workers[i] for i in np.argsort(-leverage, kind="stable")[:m]]


def corrupt(result: np.ndarray, kind: str, size: float, rng) -> np.ndarray:
    """A copy of ``result`` with a dense error of relative Frobenius size ``size`` ("dense"), or
    one entry moved by ``size`` times the result's RMS entry ("entry")."""
    out = np.array(result, dtype=np.float64, copy=True)
    if kind == "dense":
        noise = rng.standard_normal(out.shape)
        return out + size * np.linalg.norm(out) / np.linalg.norm(noise) * noise
    index = tuple(int(rng.integers(n)) for n in out.shape)
    out[index] += size * np.sqrt(np.mean(out**2))
    return out


def decode_within_estimate(code, results: dict, wrong: frozenset, expected: np.ndarray) -> bool:
    good = {w: y for w, y in results.items() if w not in wrong}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumericalWarning)
        err = rel_err(code.decode(good), expected)
        return err <= 100 * code.estimated_error(sorted(good)) + 1e-14


@pytest.mark.parametrize("points", SCHEMES)
@pytest.mark.parametrize("h", [1, 2, 3, 4])
def test_honest_results_are_never_flagged(h, points):
    k = h * h + h - 1
    n_workers = k + 5
    code, results, expected = stage1(h, n_workers, points, seed=h)
    rng = np.random.default_rng(h)
    for extra in (1, 2, 4):
        n = k + extra
        chosen = [run(n_workers, n, start) for start in range(0, n_workers, 2)]
        chosen += [sorted(rng.choice(n_workers, n, replace=False).tolist()) for _ in range(3)]
        for workers in chosen:
            subset = {w: results[w] for w in workers}
            assert locate_wrong_answers(code, subset, max_wrong=extra // 2) == frozenset()
            assert locate_wrong_answers(code, subset, max_wrong=0) == frozenset()
            check = check_consistency(code, subset)
            assert check.consistent and check.redundancy == extra
            # rounding stays far below the tolerance: a margin, not a coin toss
            assert check.residual < check.tolerance / 10


@pytest.mark.parametrize("points", SCHEMES)
@pytest.mark.parametrize("h, e", [(2, 1), (2, 2), (3, 1), (3, 2)])
def test_up_to_e_wrong_results_are_located_exactly(h, e, points):
    k = h * h + h - 1
    n_workers = k + 2 * e + 1
    code, results, expected = stage1(h, n_workers, points, seed=10 * h + e)
    rng = np.random.default_rng(10 * h + e)
    # answers from a contiguous run (one straggler), and from all workers
    for workers in (run(n_workers, k + 2 * e, 3), list(range(n_workers))):
        for m in range(1, e + 1):
            positions = [
                sorted(rng.choice(workers, m, replace=False).tolist()),  # random
                hardest(code, workers, m),  # where an error is least visible
                workers[-m:],  # adjacent ones at the end of the run
            ]
            for wrong in positions:
                for kind, size in [("dense", 1e-6), ("dense", 1e-3), ("dense", 1.0)] + [
                    ("entry", 1e-3),
                    ("entry", 1.0),
                ]:
                    subset = {w: results[w] for w in workers}
                    for w in wrong:
                        subset[w] = corrupt(results[w], kind, size, rng)
                    found = locate_wrong_answers(code, subset, max_wrong=e)
                    assert found == frozenset(wrong), (workers, wrong, kind, size)
                    assert decode_within_estimate(code, subset, found, expected)


@pytest.mark.parametrize("points", SCHEMES)
@pytest.mark.parametrize("h, e", [(2, 1), (2, 2), (3, 1), (3, 2)])
def test_more_than_e_wrong_results_never_decode_silently_wrong(h, e, points):
    k = h * h + h - 1
    n_workers = k + 2 * e
    code, results, expected = stage1(h, n_workers, points, seed=20 * h + e)
    rng = np.random.default_rng(20 * h + e)
    workers = list(range(n_workers))
    raised = 0
    for trial in range(12):
        wrong = rng.choice(workers, e + 1, replace=False).tolist()
        if trial % 3 == 0:
            wrong = hardest(code, workers, e + 1)
        kind, size = [("dense", 1e-6), ("dense", 1.0), ("entry", 1.0)][trial % 3]
        subset = dict(results)
        for w in wrong:
            subset[w] = corrupt(results[w], kind, size, rng)
        try:
            found = locate_wrong_answers(code, subset, max_wrong=e)
        except UncorrectableError as exc:
            raised += 1
            assert exc.workers == tuple(workers) and exc.max_wrong == e and exc.located == e
            assert exc.residual > exc.tolerance
            assert "do not fit one polynomial" in str(exc)
            continue
        assert decode_within_estimate(code, subset, found, expected), (wrong, found)
    assert raised > 0  # random errors beyond e are detected, not only survived


@pytest.mark.parametrize("h, e", [(3, 1), (2, 2)])
def test_errors_near_the_rounding_are_passed_raised_or_located_never_misnamed(h, e):
    # Around the detection floor the results can be ambiguous: the check may pass or raise, but
    # it names only wrong workers, and what it lets through barely moves the decode.
    k = h * h + h - 1
    n_workers = k + 2 * e + 3
    code, results, expected = stage1(h, n_workers, None, seed=40 + h)
    rng = np.random.default_rng(40 + h)
    workers = run(n_workers, k + 2 * e, 5)
    outcomes = set()
    for size in 10.0 ** np.arange(-14, -3):
        for wrong in (hardest(code, workers, e), rng.choice(workers, e, replace=False)):
            subset = {w: results[w] for w in workers}
            for w in wrong:
                subset[w] = corrupt(results[w], "dense", size, rng)
            try:
                found = locate_wrong_answers(code, subset, max_wrong=e)
            except UncorrectableError:
                outcomes.add("raised")
                continue
            outcomes.add("located" if found else "passed")
            assert found <= set(int(w) for w in wrong)
            kept = {w: y for w, y in subset.items() if w not in found}
            assert rel_err(code.decode(kept), expected) < 1e-9
    assert {"located", "passed"} <= outcomes


@pytest.mark.parametrize("points", SCHEMES)
@pytest.mark.parametrize("h", [1, 2, 3])
def test_one_spare_result_detects_one_wrong_result(h, points):
    k = h * h + h - 1
    n_workers = k + 3
    code, results, _ = stage1(h, n_workers, points, seed=30 + h)
    rng = np.random.default_rng(30 + h)
    for start in range(n_workers):
        workers = run(n_workers, k + 1, start)
        for w in (workers[0], workers[len(workers) // 2], workers[-1]):
            subset = {v: results[v] for v in workers}
            subset[w] = corrupt(results[w], "dense", 1e-6, rng)
            with pytest.raises(UncorrectableError, match="only 0 of the requested 1") as info:
                locate_wrong_answers(code, subset, max_wrong=1)
            assert info.value.located == 0
            assert not check_consistency(code, subset).consistent


def test_exactly_k_results_cannot_be_checked():
    code, results, _ = stage1(2, 7, None)
    workers = [0, 1, 2, 3, 4]
    subset = {w: results[w] for w in workers}
    subset[2] = subset[2] + 1.0  # wrong, and nothing can tell
    assert locate_wrong_answers(code, subset, max_wrong=1) == frozenset()
    assert check_consistency(code, subset) == (0.0, 0.0, 0)


def test_results_that_are_not_finite_are_wrong_by_definition():
    code, results, expected = stage1(2, 10, None)  # K = 5
    subset = dict(results)
    subset[1] = subset[1].copy()
    subset[1][0, 0, 0] = np.nan
    subset[6] = np.full_like(subset[6], np.inf)
    subset[8] = corrupt(results[8], "dense", 1e-3, np.random.default_rng(0))
    # 2 not finite, then 8 results of which 1 wrong: located within max_wrong = 3
    found = locate_wrong_answers(code, subset, max_wrong=3)
    assert found == {1, 6, 8}
    assert decode_within_estimate(code, subset, found, expected)
    with pytest.raises(UncorrectableError, match="not finite") as info:
        locate_wrong_answers(code, subset, max_wrong=1)
    assert info.value.suspects == {1, 6}
    with pytest.raises(ValueError, match="finite"):
        check_consistency(code, subset)
    # not finite and exactly K left: nothing more can be checked
    few = {w: subset[w] for w in (0, 1, 2, 3, 4, 5)}
    assert locate_wrong_answers(code, few, max_wrong=1) == {1}
    with pytest.raises(UncorrectableError, match="too few left"):
        locate_wrong_answers(code, {w: subset[w] for w in (1, 2, 3, 4, 5)}, max_wrong=1)


def test_asking_for_more_than_can_be_located_locates_what_it_can():
    code, results, expected = stage1(2, 9, None)  # K = 5, 9 results: 2 can be located
    rng = np.random.default_rng(1)
    subset = dict(results)
    subset[3] = corrupt(results[3], "dense", 1e-4, rng)
    assert locate_wrong_answers(code, subset, max_wrong=4) == {3}
    for w in (0, 5, 7):
        subset[w] = corrupt(results[w], "dense", 1e-4, rng)
    with pytest.raises(UncorrectableError, match="only 2 of the requested 4") as info:
        locate_wrong_answers(code, subset, max_wrong=4)
    assert info.value.located == 2


def test_max_wrong_zero_detects_without_locating():
    code, results, _ = stage1(2, 9, "real")
    subset = dict(results)
    subset[4] = corrupt(results[4], "entry", 1.0, np.random.default_rng(2))
    with pytest.raises(UncorrectableError, match=r"max_wrong=0"):
        locate_wrong_answers(code, subset, max_wrong=0)


@pytest.mark.parametrize("points", SCHEMES)
def test_gram_stage_results_are_checked_too(points):
    # stages 2 and 3 use the p = q = 1 code (F = B^T B, K = 2h - 1 = 3 of 7 workers)
    h, n_workers = 2, 7
    als = ALSCode(h, n_workers, points)
    rng = np.random.default_rng(3)
    B = rng.standard_normal((als.block_multiple * 4, 3))
    factor = als.encode_factor(B)
    results = {w: als.stage2(factor[w]) for w in range(n_workers)}
    code = als.gram_code
    assert locate_wrong_answers(code, results, max_wrong=2) == frozenset()
    results[2] = corrupt(results[2], "entry", 1e-3, rng)
    results[5] = corrupt(results[5], "dense", 1.0, rng)
    found = locate_wrong_answers(code, results, max_wrong=2)
    assert found == {2, 5}
    good = {w: y for w, y in results.items() if w not in found}
    assert rel_err(als.decode_stage2(good), B.T @ B) < 1e-10


def test_probes_are_reproducible_and_accept_a_generator():
    code, results, _ = stage1(3, 14, None)
    first = check_consistency(code, results, seed=5)
    assert check_consistency(code, results, seed=5) == first
    other = check_consistency(code, results, seed=np.random.default_rng(6))
    assert other.consistent and other.residual != first.residual
    assert check_consistency(code, results, seed=None).consistent
    assert check_consistency(code, results, n_probes=1).consistent


def test_single_precision_results_get_a_single_precision_tolerance():
    code, results, _ = stage1(2, 9, None)
    single = {w: y.astype(np.float32) for w, y in results.items()}
    assert locate_wrong_answers(code, single, max_wrong=2) == frozenset()
    check64, check32 = check_consistency(code, results), check_consistency(code, single)
    assert check32.tolerance > 1e6 * check64.tolerance


def test_tolerance_is_bounded_by_the_codes_own_estimate():
    # tolerance = safety eps sigma_max |c_fit| <= safety x (cond x eps) x |probes|
    for points in SCHEMES:
        code, results, _ = stage1(3, 15, points)
        workers = run(15, 13, 4)
        subset = {w: results[w] for w in workers}
        check = check_consistency(code, subset, n_probes=3, seed=1)
        rng = np.random.default_rng(1)
        rows, cols = subset[workers[0]].shape[-2:]
        u, v = rng.standard_normal((rows, 3)), rng.standard_normal((cols, 3))
        planes = [np.einsum("...rc,rj,cj->...j", subset[w], u, v) for w in workers]
        probes = np.array([p[0] + 1j * p[1] if code.complex else p for p in planes])
        bound = SAFETY_FACTOR * code.estimated_error(workers) * np.linalg.norm(probes)
        assert 0 < check.tolerance <= bound * (1 + 1e-9)
        assert check_consistency(code, subset, safety=1.0, n_probes=3, seed=1).tolerance == (
            pytest.approx(check.tolerance / SAFETY_FACTOR)
        )


class TestValidation:
    def setup_method(self):
        self.code, self.results, _ = stage1(2, 8, None)

    def test_bad_max_wrong(self):
        for bad in (-1, 1.5, None):
            with pytest.raises(ValueError, match="max_wrong"):
                locate_wrong_answers(self.code, self.results, max_wrong=bad)

    def test_too_few_results(self):
        with pytest.raises(ValueError, match="at least 5"):
            locate_wrong_answers(self.code, {w: self.results[w] for w in range(4)}, 0)
        with pytest.raises(ValueError, match="at least 5"):
            check_consistency(self.code, {w: self.results[w] for w in range(4)})

    def test_unknown_worker_and_shapes(self):
        with pytest.raises(ValueError, match="unknown worker index 8"):
            locate_wrong_answers(self.code, {**self.results, 8: self.results[0]}, 1)
        with pytest.raises(ValueError, match="has shape"):
            locate_wrong_answers(self.code, {**self.results, 3: self.results[3][:, :1]}, 1)
        with pytest.raises(ValueError, match="leading axis of 2"):
            locate_wrong_answers(self.code, {w: y[0] for w, y in self.results.items()}, 1)
        with pytest.raises(ValueError, match="map worker index"):
            locate_wrong_answers(self.code, list(self.results.values()), 1)
        with pytest.raises(TypeError, match="product_code"):
            locate_wrong_answers(ALSCode(2, 8), self.results, 1)

    def test_uncorrectable_is_a_value_error(self):
        assert issubclass(UncorrectableError, ValueError)


def test_docstring_examples_run():
    assert doctest.testmod(checking, extraglobs={"np": np}).failed == 0
