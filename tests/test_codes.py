"""Entangled polynomial codes and the coded-ALS stage codes, checked against numpy products."""

from __future__ import annotations

import itertools
import math
import warnings
from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dask_coded_als.coding import codes as codes_module
from dask_coded_als.coding.codes import ALSCode, EntangledPolynomialCode, NumericalWarning
from dask_coded_als.coding.points import evaluation_points, worst_case_condition_number

SCHEMES = [None, "real"]


def rel_err(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.linalg.norm(x - y) / np.linalg.norm(y))


def random_operands(code: EntangledPolynomialCode, rng, rows=2, cols=3):
    n = code.contraction_blocks * rows
    A = rng.standard_normal((n, code.p * cols))
    B = rng.standard_normal((n, code.q * (cols + 1)))
    return A, B


def subsets(n_workers: int, k: int, rng, n_random: int = 20, exhaustive_limit: int = 5000):
    """Every cyclic run of k consecutive points, all k-subsets when few, and random ones."""
    out = {tuple(sorted((s + i) % n_workers for i in range(k))) for s in range(n_workers)}
    if math.comb(n_workers, k) <= exhaustive_limit:
        out.update(itertools.combinations(range(n_workers), k))
    out.update(tuple(sorted(rng.choice(n_workers, k, replace=False))) for _ in range(n_random))
    return sorted(out)


@pytest.mark.parametrize("points", SCHEMES)
@pytest.mark.parametrize("pqr", [(1, 1, 1), (2, 2, 3), (3, 1, 2), (1, 3, 2), (2, 3, 1), (3, 2, 2)])
def test_epc_decodes_a_transpose_b_from_any_threshold_subset(points, pqr):
    rng = np.random.default_rng(sum(pqr))
    p, q, r = pqr
    code = EntangledPolynomialCode(p, q, r, p * q * r + r - 1 + 3, points)
    assert code.recovery_threshold == p * q * r + r - 1
    A, B = random_operands(code, rng)
    a, b = code.encode_a(A), code.encode_b(B)
    assert len(a) == len(b) == code.n_workers
    products = [code.compute(a[w], b[w]) for w in range(code.n_workers)]
    expected = A.T @ B  # general A^T B, A not symmetric
    for subset in subsets(code.n_workers, code.recovery_threshold, rng, n_random=5):
        decoded = code.decode({w: products[w] for w in subset})
        assert decoded.shape == expected.shape
        assert rel_err(decoded, expected) < 1e-9
    # every result at once: least squares over all of them
    limit = 1e-12 if points is None else 1e-10
    assert rel_err(code.decode(dict(enumerate(products))), expected) < limit


@settings(max_examples=30, deadline=None)
@given(
    p=st.integers(1, 3),
    q=st.integers(1, 3),
    r=st.integers(1, 3),
    spare=st.integers(0, 3),
    rows=st.integers(1, 4),
    cols=st.integers(1, 4),
    circle=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_epc_property_random_shapes(p, q, r, spare, rows, cols, circle, seed):
    rng = np.random.default_rng(seed)
    code = EntangledPolynomialCode(p, q, r, p * q * r + r - 1 + spare, None if circle else "real")
    A, B = random_operands(code, rng, rows, cols)
    a, b = code.encode_a(A), code.encode_b(B)
    chosen = [int(w) for w in rng.choice(code.n_workers, code.recovery_threshold, replace=False)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumericalWarning)
        decoded = code.decode({w: code.compute(a[w], b[w]) for w in chosen})
    # the real code is only as good as its conditioning allows; the circle always decodes
    limit = 1e-8 if circle else max(1e-8, 1e3 * code.estimated_error(chosen))
    assert rel_err(decoded, A.T @ B) < limit
    chosen_b = [int(w) for w in rng.choice(code.n_workers, code.b_threshold, replace=False)]
    limit_b = 1e-8 if circle else max(1e-8, 1e3 * code.estimated_b_error(chosen_b))
    assert rel_err(code.decode_b({w: b[w] for w in chosen_b}), B) < limit_b


@pytest.mark.parametrize("points", SCHEMES)
def test_decode_b_recovers_scaled_operand(points):
    rng = np.random.default_rng(3)
    code = EntangledPolynomialCode(1, 1, 4, 10, points)
    assert code.b_threshold == 4
    B = rng.standard_normal((code.contraction_blocks * 3, 5))
    G = rng.standard_normal((5, 5))
    shards = code.encode_b(B)
    scaled = {w: code.scale_b(shards[w], G) for w in (1, 4, 7, 9)}
    assert rel_err(code.decode_b(scaled), B @ G) < 1e-12


@pytest.mark.parametrize("chunk", [1, 7, 2**22])
def test_circle_product_is_the_complex_product(monkeypatch, chunk):
    # The three-GEMM product of packed planes equals the complex product it stands for, however
    # the product is cut into column chunks.
    monkeypatch.setattr(codes_module, "_chunk_columns", lambda n_columns, per_column: chunk)
    rng = np.random.default_rng(4)
    code = EntangledPolynomialCode(2, 1, 2, 8)
    A, B = random_operands(code, rng)
    a, b = code.encode_a(A)[5], code.encode_b(B)[5]
    product = code.compute(a, b)
    expected = (a[0] + 1j * a[1]).T @ (b[0] + 1j * b[1])
    np.testing.assert_allclose(product[0] + 1j * product[1], expected, rtol=1e-12, atol=1e-12)
    # storage per worker equals the real code's: N/r x M/p reals
    real = EntangledPolynomialCode(2, 1, 2, 8, "real")
    assert a.size == real.encode_a(A)[5].size
    ra, rb = real.encode_a(A)[5], real.encode_b(B)[5]
    np.testing.assert_allclose(real.compute(ra, rb), ra.T @ rb, rtol=1e-12, atol=1e-12)


def test_an_interrupted_product_returns_none_between_chunks(monkeypatch):
    monkeypatch.setattr(codes_module, "_chunk_columns", lambda n_columns, per_column: 2)
    rng = np.random.default_rng(6)
    for points in (None, "real"):
        code = EntangledPolynomialCode(2, 1, 2, 8, points)
        A, B = random_operands(code, rng, cols=7)  # 7 output columns: 4 chunks of 2
        a, b = code.encode_a(A)[3], code.encode_b(B)[3]
        looks = []

        def interrupt(looks=looks):
            looks.append(1)
            return len(looks) > 2  # stop before the third chunk

        assert code.compute(a, b, interrupt) is None
        assert len(looks) == 3


class TestBadInput:
    code = EntangledPolynomialCode(2, 1, 2, 8)

    def shards(self):
        rng = np.random.default_rng(5)
        A, B = random_operands(self.code, rng)
        a, b = self.code.encode_a(A), self.code.encode_b(B)
        return {w: self.code.compute(a[w], b[w]) for w in range(8)}

    def test_too_few_results(self):
        results = self.shards()
        with pytest.raises(ValueError, match="at least 5 workers, got 4"):
            self.code.decode({w: results[w] for w in range(4)})

    def test_unknown_worker(self):
        results = self.shards()
        with pytest.raises(ValueError, match="unknown worker index 8"):
            self.code.decode({**{w: results[w] for w in range(4)}, 8: results[0]})

    def test_mismatched_shapes(self):
        results = self.shards()
        results[3] = results[3][:, :1]
        with pytest.raises(ValueError, match="result of worker 3 has shape"):
            self.code.decode(results)

    def test_non_finite_result(self):
        results = self.shards()
        results[2] = np.full_like(results[2], np.nan)
        with pytest.raises(ValueError, match="not finite"):
            self.code.decode(results)

    @pytest.mark.parametrize("points", SCHEMES)
    def test_indivisible_dimensions(self, points):
        code = EntangledPolynomialCode(2, 1, 2, 8, points)
        with pytest.raises(ValueError, match="pad with zeros"):
            code.encode_a(np.ones((code.contraction_blocks * 2 + 1, 4)))
        with pytest.raises(ValueError, match="pad with zeros"):
            code.encode_a(np.ones((code.contraction_blocks * 2, 3)))

    def test_threshold_above_workers(self):
        with pytest.raises(ValueError, match="exceeds n_workers"):
            EntangledPolynomialCode(2, 2, 2, 8)

    def test_bad_partition_and_points(self):
        with pytest.raises(ValueError, match="p must be an integer >= 1"):
            EntangledPolynomialCode(0, 1, 1, 3)
        with pytest.raises(ValueError, match="points must be one of"):
            EntangledPolynomialCode(1, 1, 1, 3, "chebyshev")
        with pytest.raises(ValueError, match="unit circle"):
            evaluation_points(2, [0.5j, 1j])
        with pytest.raises(ValueError, match="distinct"):
            evaluation_points(2, [0.5, 0.5])


# Stability of the default: for every straggler pattern, with K <= 41 and W - K <= 9.
STABILITY_CASES = [
    # (p, q, r, spare workers)
    (6, 1, 6, 9),  # coded ALS stage 1 at h = 6: K = 41, W = 50
    (6, 1, 6, 3),
    (6, 1, 6, 2),  # W = 43: exhaustive over all C(43, 41) = 903 subsets
    (5, 1, 5, 9),  # K = 29, W = 38
    (5, 1, 5, 3),
    (4, 1, 4, 9),
    (3, 1, 3, 9),
    (3, 1, 3, 3),  # C(14, 11) = 364: exhaustive
    (1, 1, 6, 9),  # stages 2 and 3 at h = 6: K = 11, W = 20
    (1, 1, 6, 3),
    (2, 2, 3, 9),
]


@pytest.mark.parametrize("p,q,r,spare", STABILITY_CASES)
def test_default_points_decode_stably_for_every_straggler_pattern(p, q, r, spare):
    rng = np.random.default_rng(p * 100 + q * 10 + r + spare)
    k = p * q * r + r - 1
    code = EntangledPolynomialCode(p, q, r, k + spare)
    A, B = random_operands(code, rng)
    a, b = code.encode_a(A), code.encode_b(B)
    products = [code.compute(a[w], b[w]) for w in range(code.n_workers)]
    expected = A.T @ B
    limit = 1e-10 if spare <= 3 else 1e-8
    worst = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", NumericalWarning)
        for subset in subsets(code.n_workers, k, rng, n_random=30):
            worst = max(worst, rel_err(code.decode({w: products[w] for w in subset}), expected))
    assert worst < limit


def test_real_points_fail_where_the_circle_succeeds():
    # The paper's real-valued code at h = 6 (K = 41) cannot decode in float64; it must say so.
    rng = np.random.default_rng(6)
    for points, should_work in ((None, True), ("real", False)):
        code = EntangledPolynomialCode(6, 1, 6, 44, points)
        A, B = random_operands(code, rng)
        a, b = code.encode_a(A), code.encode_b(B)
        chosen = range(3, 44)  # the stragglers are the first three points
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            decoded = code.decode({w: code.compute(a[w], b[w]) for w in chosen})
        error = rel_err(decoded, A.T @ B)
        warned = any(issubclass(w.category, NumericalWarning) for w in caught)
        if should_work:
            assert error < 1e-10 and not warned
        else:
            assert error > 1e-3 and warned


def test_worst_case_condition_numbers_match_the_measured_table():
    # docs/numerics.md: roots of unity stay small where real points blow up
    assert worst_case_condition_number(18, 15) == pytest.approx(103, rel=0.02)
    assert worst_case_condition_number(18, 15, "real") == pytest.approx(1.65e6, rel=0.05)
    assert worst_case_condition_number(43, 41) < 100
    assert 900 < worst_case_condition_number(44, 41) < 1100
    with pytest.raises(ValueError):
        worst_case_condition_number(5, 6)


# ---- the coded-ALS stage codes ------------------------------------------------------------


def direct_update(D: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Eq. (12): B+ = D B (B^T D B)^-1 B^T B, computed with numpy."""
    E = D @ B
    return E @ np.linalg.solve(B.T @ E, B.T @ B)


@pytest.mark.parametrize("points", SCHEMES)
@pytest.mark.parametrize("h", [1, 2, 3, 4])
def test_one_coded_iteration_equals_eq_12(points, h):
    rng = np.random.default_rng(h)
    code = ALSCode(h, h * h + h - 1 + 2, points)
    assert code.recovery_threshold == h * h + h - 1
    assert code.stage_thresholds == {"E": h * h + h - 1, "F": 2 * h - 1, "S": 2 * h - 1, "B": h}
    size = code.padded_size(4 * h + 1)
    R = rng.standard_normal((3 * size, size))
    D = R.T @ R
    B = rng.standard_normal((size, 3))
    data, factor = code.encode_data(D), code.encode_factor(B)

    def pick(n):
        return [int(w) for w in rng.choice(code.n_workers, n, replace=False)]

    E = code.decode_stage1(
        {w: code.stage1(data[w], factor[w]) for w in pick(code.stage_thresholds["E"])}
    )
    F = code.decode_stage2({w: code.stage2(factor[w]) for w in pick(2 * h - 1)})
    e_shards = code.encode_e(E)
    S = code.decode_stage3({w: code.stage3(factor[w], e_shards[w]) for w in pick(2 * h - 1)})
    G = np.linalg.solve(S, F)
    B_next = code.decode_stage4({w: code.stage4(e_shards[w], G) for w in pick(h)})
    limit = 1e-10 if points is None else 1e-8  # real points lose digits from h = 4 on
    assert rel_err(E, D @ B) < limit
    assert rel_err(F, B.T @ B) < limit
    assert rel_err(S, B.T @ D @ B) < limit
    assert rel_err(B_next, direct_update(D, B)) < limit


def test_padding_multiple_and_size():
    assert ALSCode(3, 11).block_multiple == 6  # pairs of blocks on the circle
    assert ALSCode(3, 11, "real").block_multiple == 3
    assert ALSCode(3, 11).padded_size(100) == 102
    assert ALSCode(3, 11, "real").padded_size(99) == 99


def test_erratum_eq17_f_r_starts_with_the_last_block():
    # f_R(C, x) = C_{h-1} + C_{h-2} x + ... + C_0 x^{h-1}; the paper's eq. 17 writes C_h first,
    # which does not exist. The real code's right encoding must be exactly the corrected one.
    rng = np.random.default_rng(7)
    h, n_workers = 3, 11
    code = ALSCode(h, n_workers, "real")
    C = rng.standard_normal((h * 2, 4))
    blocks = C.reshape(h, 2, 4)
    xs = evaluation_points(n_workers, "real")
    shards = code.encode_factor(C)
    for w in range(n_workers):
        f_left = sum(blocks[j] * xs[w] ** j for j in range(h))
        f_right = sum(blocks[j] * xs[w] ** (h - 1 - j) for j in range(h))
        np.testing.assert_allclose(shards[w][0], f_left, rtol=1e-13)
        np.testing.assert_allclose(shards[w][1], f_right, rtol=1e-13)


def test_circle_factor_shard_carries_half_the_upload():
    # On the circle f_R = conj(f_L): one packed array per worker, l/h x d reals in all.
    code, real = ALSCode(2, 5), ALSCode(2, 5, "real")
    B = np.ones((8, 3))
    assert code.encode_factor(B)[0].size * 2 == real.encode_factor(B)[0].size


# ---- the code family: partitions (p, r) and output pairing --------------------------------------


@pytest.mark.parametrize("p", [1, 2, 5])
def test_output_pairing_decodes_from_any_p_answers_at_the_real_cost(p):
    rng = np.random.default_rng(p)
    W = p + 3
    code = EntangledPolynomialCode(p, 1, 1, W, pairing="output")
    real = EntangledPolynomialCode(p, 1, 1, W, "real")
    A = rng.standard_normal((12, 2 * p * 3))
    B = rng.standard_normal((12, 4))
    shards, operands = code.encode_a(A), code.encode_b(B)
    # B travels as it is, and a shard holds what the real code's does
    assert all(o is not None and np.array_equal(o, B) for o in operands)
    assert shards[0].size == real.encode_a(A)[0].size
    for subset in subsets(W, p, rng):
        answers = {w: code.compute(shards[w], operands[w]) for w in subset}
        assert rel_err(code.decode(answers), A.T @ B) < 1e-12
    # two real products of half the width: the real code's multiply-adds
    assert code.compute(shards[0], B).shape == (2, A.shape[1] // (2 * p), 4)


def test_output_pairing_needs_the_circle_and_q_r_one():
    for args, kwargs in (
        ((2, 1, 1, 6, "real"), {}),
        ((2, 1, 2, 8), {}),
        ((2, 2, 1, 8), {}),
    ):
        with pytest.raises(ValueError, match="pairing='output' needs"):
            EntangledPolynomialCode(*args, pairing="output", **kwargs)


@pytest.mark.parametrize("points", [None, "real"])
@pytest.mark.parametrize("partition", [(1, 1), (4, 1), (11, 1), (3, 2), (5, 2), (1, 3), (3, 3)])
def test_every_partition_decodes_e_from_any_threshold_answers(points, partition):
    p, r = partition
    rng = np.random.default_rng(p * 10 + r)
    W = p * r + r - 1 + 2
    code = ALSCode(partition, W, points)
    assert code.partition == partition and code.recovery_threshold == p * r + r - 1
    assert code.h == (p if p == r else None)
    size = code.padded_size(3 * code.block_multiple + 1)
    assert size % code.block_multiple == 0
    R = rng.standard_normal((2 * size, size))
    D, B = R.T @ R, rng.standard_normal((size, 3))
    shards, operand = code.encode_data(D), code.encode_operand(B)
    factor = code.encode_factor(B)
    for subset in list(subsets(W, code.recovery_threshold, rng, n_random=5))[:8]:
        E = code.decode_stage1({w: code.product(shards[w], operand[w]) for w in subset})
        assert rel_err(E, D @ B) < (1e-10 if points is None else 1e-8)
        # the paper's step 1 from factor shards gives the same E and F = B^T B
        both = {w: code.stage1_and_2(shards[w], factor[w]) for w in subset}
        assert rel_err(code.decode_stage1({w: v[0] for w, v in both.items()}), D @ B) < 1e-8
        assert rel_err(code.decode_stage2({w: v[1] for w, v in both.items()}), B.T @ B) < 1e-8


def test_partition_parses_h_and_pairs():
    assert codes_module.partition(4) == (4, 4)
    assert codes_module.partition((11, 1)) == (11, 1)
    for bad in (0, (2,), (2, 0), "3,3", (1.5, 2), True):
        with pytest.raises(ValueError):
            codes_module.partition(bad)


@pytest.mark.parametrize("h", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("spare", [0, 3, 9])
def test_the_default_points_decode_within_budget_for_every_straggler_run(h, spare):
    # The engine's default takes real points only where they are well conditioned; whichever it
    # takes, the worst pattern (a contiguous run of answering workers) decodes within 1e-8.
    from dask_coded_als.coding.points import REAL_CONDITION_LIMIT, choose_points

    K = h * h + h - 1
    W = K + spare
    points = choose_points(W, K, h)
    if points == "real":
        assert worst_case_condition_number(W, K, "real") <= REAL_CONDITION_LIMIT
    rng = np.random.default_rng(h * 100 + spare)
    code = EntangledPolynomialCode(h, 1, h, W, points)
    A, B = random_operands(code, rng)
    a, b = code.encode_a(A), code.encode_b(B)
    worst = 0.0
    for start in range(W):
        run = [(start + i) % W for i in range(K)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NumericalWarning)
            decoded = code.decode({w: code.compute(a[w], b[w]) for w in run})
        worst = max(worst, rel_err(decoded, A.T @ B))
    assert worst < 1e-8, (points, worst)


@pytest.mark.parametrize(
    "partition,points", [(2, "real"), (3, "circle"), ((5, 1), "circle"), ((4, 2), "real")]
)
def test_a_shard_built_strip_by_strip_equals_the_encoded_one(partition, points):
    import zarr

    rng = np.random.default_rng(3)
    X = rng.standard_normal((50, 37))
    D = X.T @ X
    code = ALSCode(partition, 13, points)
    full = code.encode_data(D)
    on_disk = zarr.array(D, chunks=(10, 10))  # read on slicing, as a stored D is
    for w in (0, 6, 12):
        # real coefficients are applied as encode_data applies them: the same sums exactly; the
        # circle's complex ones are split in two real planes: the same sums to rounding
        if points == "real":
            same = np.testing.assert_array_equal
        else:
            scale = np.abs(full[w]).max()
            same = partial(np.testing.assert_allclose, rtol=0, atol=8 * 2.0**-53 * scale)
        for strip_bytes in (8, 8 * 7, 2**20):  # one row per strip, a few, all at once
            same(code.data_shard(D, w, strip_bytes=strip_bytes), full[w])
        same(code.data_shard(on_disk, w, strip_bytes=100), full[w])
        single = code.data_shard(on_disk, w, np.float32)
        assert single.dtype == np.float32
        # summed in float32: within a few roundings of the float64 shard at its scale
        scale = np.abs(full[w]).max()
        np.testing.assert_allclose(single, full[w], rtol=0, atol=8 * 2.0**-24 * scale)


def test_products_keep_the_precision_of_their_operands():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((300, 200)), rng.standard_normal((300, 5))
    for kind, shape_a, shape_b in (
        ("real", (300, 200), (300, 5)),
        ("planes", (2, 300, 200), (300, 5)),
        ("packed", (2, 300, 200), (2, 300, 5)),
    ):
        left = rng.standard_normal(shape_a).astype(np.float32)
        right = rng.standard_normal(shape_b).astype(np.float32)
        single = codes_module.worker_product(kind, left, right)
        double = codes_module.worker_product(kind, left.astype(float), right.astype(float))
        assert single.dtype == np.float32 and double.dtype == np.float64
        assert np.linalg.norm(single - double) / np.linalg.norm(double) < 1e-5
    assert codes_module.matmul_t(a, b).dtype == np.float64


def test_float32_results_decode_in_float64_from_the_circle_only():
    from dask_coded_als.coding.points import choose_points

    # W = 13, K = 11: real points decode well enough in float64 and not in float32
    assert choose_points(13, 11, 3) == "real"
    assert choose_points(13, 11, 3, "float32") == "circle"
    assert choose_points(13, 11, 1, "float32") == "circle"


def test_the_real_embedding_of_the_circle_code_has_its_conditioning_and_costs_more():
    """pipelines/rotation_table.py: the 2 x 2 rotation-matrix form of the circle's Vandermonde
    systems has the complex system's condition number, and its one real GEMM is the complex
    product."""
    from support import load_script

    table = load_script("dask_coded_als_pipelines_rotation_table", "pipelines/rotation_table.py")
    for h in (2, 3):
        _, _, complex_cond, real_cond = table.conditioning(h)
        assert real_cond == pytest.approx(complex_cond, rel=1e-9)
    seconds = table.products(60, 4, 1)  # checks the embedded product against the complex one
    assert set(seconds) == {
        "real points",
        "circle, 3 real GEMMs (Gauss)",
        "circle, embedded: 1 real GEMM",
    }
